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
sparse   SparseAdam, lazy optimizers, top-k/random-k with error feedback, L1
compress PowerSGD (standalone and as a DDP hook), GaLore-style projection
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
