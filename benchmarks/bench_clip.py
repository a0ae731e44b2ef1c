"""Global-norm gradient clipping: time and effective memory bandwidth.

Cases: torch.nn.utils.clip_grad_norm_ (foreach and per-tensor loop),
gradlab.clip.clip_grad_norm_ (the same two paths) and gradlab.clip.FlatGradients
(the gradients in one buffer: one reduction and one in-place scale, the
fused path), against two references for
the attainable memory bandwidth, the roofline of a memory-bound kernel: a copy
into another buffer (``dst.copy_(src)``) and an in-place scaling
(``x.mul_(c)``), both counted as 8 bytes per float.

Clipping N float32 gradients reads them once for the norms and once more to
scale them, and writes them once: at least 3 * 4 * N bytes of traffic. The
effective bandwidth below is that count divided by the time.

    python benchmarks/bench_clip.py [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cli, time_it, write_results  # noqa: E402

from gradlab.clip import FlatGradients, clip_grad_norm_  # noqa: E402


def make_grads(total: int, n_tensors: int, device: torch.device) -> list[torch.Tensor]:
    size = total // n_tensors
    params = []
    for _ in range(n_tensors):
        p = torch.empty(size, device=device, requires_grad=True)
        p.grad = torch.randn(size, device=device)
        params.append(p)
    return params


def measure(total: int, n_tensors: int, device: torch.device) -> list[dict]:
    """All cases at one problem size (the tensors are freed on return)."""
    params = make_grads(total, n_tensors, device)
    n = sum(p.numel() for p in params)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    cases = []
    copy = time_it(lambda: dst.copy_(src), device, repeats=10)
    copy_gbs = 2 * 4 * n / copy["median_s"] / 1e9
    cases.append({"impl": "copy (reference)", "params": n, **copy, "gb_per_s": copy_gbs})
    scale = time_it(lambda: src.mul_(1.0), device, repeats=10)
    cases.append({"impl": "in-place scale (reference)", "params": n, **scale,
                  "gb_per_s": 2 * 4 * n / scale["median_s"] / 1e9})
    impls = {
        "torch foreach": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
        "torch loop": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=False),
        "gradlab foreach": lambda: clip_grad_norm_(params, 1.0, foreach=True),
        "gradlab loop": lambda: clip_grad_norm_(params, 1.0, foreach=False),
    }
    for name, fn in impls.items():
        cases.append(_clip_case(name, fn, n, device, copy_gbs))
    # last, because it moves every p.grad into one buffer (the list paths above see separate tensors)
    flat = FlatGradients(params)
    cases.append(_clip_case("gradlab flat buffer", lambda: flat.clip_norm_(1.0), n, device, copy_gbs))
    return cases


def _clip_case(name: str, fn, n: int, device: torch.device, copy_gbs: float) -> dict:
    t = time_it(fn, device, repeats=10)
    gbs = 3 * 4 * n / t["median_s"] / 1e9
    print(f"{n:>11,d} params  {name:19s} {t['median_s'] * 1e3:9.3f} ms  {gbs:7.1f} GB/s "
          f"({gbs / copy_gbs:.0%} of copy)", flush=True)
    return {"impl": name, "params": n, **t, "gb_per_s": gbs, "fraction_of_copy_bandwidth": gbs / copy_gbs}


def main(argv=None) -> None:
    args, device = cli(__doc__, argv)
    if args.quick:
        sizes = [2**20]
    elif device.type == "cuda":
        sizes = [2**24, 2**27, 500_000_000]  # up to 500 M parameters (2 GB of float32)
    else:
        sizes = [2**20, 2**22, 2**24]
    n_tensors = 128
    cases = [case for total in sizes for case in measure(total, n_tensors, device)]
    # a quick (smoke-test) run never overwrites the stored full results
    path = write_results("clip-quick" if args.quick else "clip", device, cases, quick=args.quick,
                         n_tensors=n_tensors, bytes_per_param=12,
                         note="effective bandwidth = 12 bytes per parameter / median time")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
