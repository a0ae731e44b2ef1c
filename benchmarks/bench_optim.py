"""Cost of one Adam step: for-loop, foreach and fused implementations, and the
memory-bandwidth limit.

Cases: ``gradlab.optim.Adam`` (``foreach=False``: a Python loop over tensors;
``foreach=True``: multi-tensor kernels) and ``torch.optim.Adam`` (loop, foreach,
fused), against a reference for the attainable memory bandwidth, a copy
(``dst.copy_(src)``, 8 bytes per float32).

An Adam step reads the parameter, the gradient and the two moments and writes
the parameter and the two moments: 7 words, 28 bytes per float32 parameter. The
effective bandwidth below is 28 * N bytes divided by the median time; the ideal
step time is 28 * N bytes / the copy bandwidth.

    python benchmarks/bench_optim.py [--device auto|cpu|cuda] [--quick]

:func:`gradlab.benchmarks.plot_optim` draws the stored JSON files (one line per device).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cli, time_it, write_results  # noqa: E402

from gradlab import optim  # noqa: E402

BYTES_PER_PARAM = 28  # 7 float32 words: read p, g, m, v; write p, m, v

IMPLS = {
    "gradlab loop": lambda ps: optim.Adam(ps, foreach=False),
    "gradlab foreach": lambda ps: optim.Adam(ps, foreach=True),
    "torch loop": lambda ps: torch.optim.Adam(ps, foreach=False),
    "torch foreach": lambda ps: torch.optim.Adam(ps, foreach=True),
    "torch fused": lambda ps: torch.optim.Adam(ps, fused=True),
}


def measure(total: int, n_tensors: int, device: torch.device) -> list[dict]:
    """All cases at one problem size (tensors are freed on return)."""
    size = total // n_tensors
    n = size * n_tensors
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy = time_it(lambda: dst.copy_(src), device, repeats=20, min_time=0.2)
    copy_gbs = 8 * n / copy["median_s"] / 1e9
    cases = [{"impl": "copy (reference)", "params": n, **copy, "gb_per_s": copy_gbs,
              "ideal_adam_s": BYTES_PER_PARAM * n / (copy_gbs * 1e9)}]
    for name, make in IMPLS.items():
        params = [torch.zeros(size, device=device, requires_grad=True) for _ in range(n_tensors)]
        for p in params:
            p.grad = torch.randn(size, device=device) * 1e-3
        opt = make(params)
        t = time_it(opt.step, device, repeats=10, warmup=2, min_time=0.2)
        gbs = BYTES_PER_PARAM * n / t["median_s"] / 1e9
        cases.append({"impl": name, "params": n, **t, "gb_per_s": gbs,
                      "fraction_of_copy_bandwidth": gbs / copy_gbs})
        print(f"{n:>11,d} params  {name:16s} {t['median_s'] * 1e3:9.3f} ms  {gbs:7.1f} GB/s "
              f"({gbs / copy_gbs:.0%} of copy)", flush=True)
        del opt, params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cases


def main(argv=None) -> None:
    args, device = cli(__doc__, argv)
    if args.quick:
        sizes = [2**18]
    elif device.type == "cuda":
        sizes = [2**22, 2**25, 2**27, 500_000_000]  # up to 500 M parameters
    else:
        sizes = [2**18, 2**20, 2**22]
    n_tensors = 128
    cases = [case for total in sizes for case in measure(total, n_tensors, device)]
    # a quick (smoke-test) run never overwrites the stored full results
    path = write_results("optim-quick" if args.quick else "optim", device, cases, quick=args.quick,
                         n_tensors=n_tensors, bytes_per_param=BYTES_PER_PARAM,
                         note="effective bandwidth = 28 bytes per parameter / median time")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
