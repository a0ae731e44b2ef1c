"""Resolve the ``device`` parameter every chapter takes.

A chapter says ``device="auto"`` by default; readers may pass ``"cpu"``,
``"cuda"`` or ``"cuda:N"`` (papermill ``-p device cuda``). Asking for a GPU on a
machine without one is an error that says what to do, never a silent fall-back
to the CPU: a reader who asked for the GPU should know they are not on it.

Neighbours: :mod:`gradlab.seed` is the other call at the top of every chapter;
:func:`gradlab.lm.train_char_lm` and the benchmarks resolve their ``device``
here too.
"""

from __future__ import annotations

import re

import torch

__all__ = ["DeviceUnavailableError", "resolve_device", "describe_device"]

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


class DeviceUnavailableError(RuntimeError):
    """A device was requested that this machine (or this torch build) lacks."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    ``"auto"`` (or ``None``) gives ``cuda`` when PyTorch sees a CUDA GPU and
    ``cpu`` otherwise. ``"cuda"``/``"cuda:N"`` require that GPU to exist.

    Raises
    ------
    DeviceUnavailableError
        CUDA was requested but is not available, or the index is out of range.
    ValueError
        The request is not one of the accepted forms.
    """
    if device is None:
        device = "auto"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {type(device).__name__}"
        )
    request = device.strip().lower()
    if request == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if request == "cpu":
        return torch.device("cpu")
    match = _CUDA_RE.match(request)
    if match is None:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        )
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (this is a CPU-only build of PyTorch)"
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA: {build}). "
            "Run with device='auto' (uses the GPU when there is one) or device='cpu'; "
            "in Colab choose Runtime > Change runtime type > GPU and run again."
        )
    index = int(match.group(1)) if match.group(1) is not None else None
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but only {count} CUDA device(s) exist "
            f"(valid: {', '.join(f'cuda:{i}' for i in range(count))})."
        )
    return torch.device("cuda" if index is None else f"cuda:{index}")


def describe_device(device: str | torch.device) -> str:
    """A human-readable name: ``"cpu"`` or the GPU's model, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"
