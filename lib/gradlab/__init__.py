"""gradlab: the tested code behind *Taming Exploding Gradients*.

Each chapter of the book has one main module here; the chapter shows the idea
with a short inline version and points at the tested one.

Modules
-------
device   resolve ``"auto"``/``"cpu"``/``"cuda[:N]"`` with clear errors
seed     one call that seeds python, numpy and torch
models   MLPs with a choice of initialisation, an unrollable RNN, an LSTM
data     synthetic tasks (adding problem, teacher-student) and a real data set
monitor  gradient-norm tracking with hooks, non-finite detection, spikes
plot     the book's figure style
checks   auto-checks for the coding exercises
clip     gradient clipping (global norm, value, AGC, adaptive threshold)
spectral power iteration, randomized SVD, Jacobian spectra, orthogonal init
sparse   SparseAdam and the lazy optimizers for sparse gradients
prune    sparse weights: the L1 proximal step, magnitude pruning
compress gradient compression: top-k/random-k, error feedback, DGC, PowerSGD
ddp      DDP communication hooks; ``python -m gradlab.ddp_train`` (the training script)
galore   GaLore: AdamW with low-rank optimizer state
lm       the case study: character-level LSTM/GRU/transformer and a logged training loop
"""

from gradlab.device import DeviceUnavailableError, describe_device, resolve_device
from gradlab.seed import seed_everything

__all__ = [
    "DeviceUnavailableError",
    "describe_device",
    "resolve_device",
    "seed_everything",
]

__version__ = "0.1.0"
