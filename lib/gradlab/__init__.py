"""gradlab: the tested code behind *Taming Exploding Gradients*.

Each chapter of the book has its main modules here; the chapter shows the idea
with a short inline version and points at the tested one. Each module's tests
are in ``tests/lib/test_<module>.py`` and compare it with its reference (torch,
numpy, scipy or the formula).

========================  ===========================================  ==========================================
chapter                   modules                                      tests (``tests/lib/``)
========================  ===========================================  ==========================================
1 What explodes, and why  models, data, monitor                        test_models, test_data, test_monitor
2 Gradient clipping       clip                                         test_clip
3 The spectral view       spectral                                     test_spectral
4 SGD and its variants    optim                                        test_optim
5 Sparse updates          sparse, prune (and compress's top-k)         test_sparse, test_prune
6 Low-rank compression    compress, ddp, ddp_train, galore             test_compress, test_ddp, test_galore
7 Case study              lm                                           test_lm
every chapter             device, seed, plot, checks (the exercises)   test_device, test_seed, test_plot,
                                                                       test_checks
========================  ===========================================  ==========================================

Modules
-------
device    resolve ``"auto"``/``"cpu"``/``"cuda[:N]"`` with clear errors
seed      one call that seeds python, numpy and torch
models    MLPs with a choice of initialisation, an unrollable RNN, an LSTM
data      synthetic tasks (adding problem, teacher-student) and a real data set
monitor   gradient norms (overflow-safe), hooks, non-finite detection, spikes
plot      the book's figure style
checks    auto-checks for the coding exercises
clip      gradient clipping (global norm, value, AGC, adaptive threshold)
spectral  power iteration, randomized SVD, Jacobian spectra, orthogonal init
sparse    SparseAdam and the lazy optimizers for sparse gradients
prune     sparse weights: the L1 proximal step, magnitude pruning
compress  gradient compression: top-k/random-k, error feedback, DGC, PowerSGD
ddp       DDP communication hooks; ``python -m gradlab.ddp_train`` (the training script)
galore    GaLore: AdamW with low-rank optimizer state
lm        the case study: character-level LSTM/GRU/transformer and a logged training loop

Two private modules serve the others, so that each piece is written once:
``_tensors`` (the one global-norm function, the multi-tensor choice, grouping by
device and dtype; tests in test_tensors) and ``_validate`` (argument checks with
one message style; tests in test_validate).
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
