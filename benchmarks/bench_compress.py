"""Low-rank compression: time of one PowerSGD step against an SVD, and GaLore against AdamW.

Cases (float32, square n x n matrices):

* ``compress``: ``gradlab.compress.PowerSGD.compress`` at ranks 1, 4 and 16 (one
  warm-started power iteration with error feedback: two matrix products, a QR
  of an n x r matrix, the residual) and ``torch.linalg.svd`` of the same matrix,
  the cost an exact best rank-r approximation would add every step;
* ``optimizer``: one ``GaLoreAdamW`` step (rank 16, projector refreshed every
  200 steps, so the SVD cost is amortised) against one ``torch.optim.AdamW`` step,
  with the bytes of optimizer state of each.

    python benchmarks/bench_compress.py [--device auto|cpu|cuda] [--quick]

:func:`gradlab.benchmarks.plot_compress` draws the stored results (the chapter
"Low-rank compression" shows the same figure).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cli, time_it, write_results  # noqa: E402

from gradlab.compress import PowerSGD  # noqa: E402
from gradlab.galore import GaLoreAdamW, optimizer_state_bytes  # noqa: E402


def compress_cases(n: int, device: torch.device, repeats: int) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    M = torch.randn(n, n, generator=g).to(device)
    cases = []
    for rank in (1, 4, 16):
        comp = PowerSGD(rank)
        t = time_it(lambda comp=comp: comp.compress("w", M), device, repeats=repeats)
        cases.append({"kind": "compress", "impl": f"PowerSGD rank {rank}", "n": n, **t})
        print(f"n={n:5d}  PowerSGD rank {rank:2d}  {t['median_s'] * 1e3:9.3f} ms", flush=True)
    t = time_it(lambda: torch.linalg.svd(M, full_matrices=False), device, repeats=max(3, repeats // 4), warmup=1)
    cases.append({"kind": "compress", "impl": "SVD (torch.linalg.svd)", "n": n, **t})
    print(f"n={n:5d}  SVD               {t['median_s'] * 1e3:9.3f} ms", flush=True)
    return cases


def optimizer_cases(n: int, device: torch.device, repeats: int) -> list[dict]:
    cases = []
    for name in ("AdamW", "GaLoreAdamW rank 16"):
        W = torch.randn(n, n, device=device, requires_grad=True)
        W.grad = torch.randn(n, n, device=device)
        if name == "AdamW":
            opt = torch.optim.AdamW([W], lr=1e-3)
        else:
            opt = GaLoreAdamW([{"params": [W], "rank": 16, "update_proj_gap": 200}], lr=1e-3)
        opt.step()  # the first step builds the state (and GaLore's projector)
        t = time_it(opt.step, device, repeats=repeats)
        cases.append({"kind": "optimizer", "impl": name, "n": n, "state_bytes": optimizer_state_bytes(opt), **t})
        print(f"n={n:5d}  {name:20s} {t['median_s'] * 1e3:9.3f} ms  state {optimizer_state_bytes(opt):,d} B",
              flush=True)
    return cases


def main(argv=None) -> None:
    args, device = cli(__doc__, argv)
    if args.quick:
        sizes = [256]
    elif device.type == "cuda":
        sizes = [256, 1024, 4096, 8192]
    else:
        sizes = [256, 512, 1024, 2048]
    cases = []
    for n in sizes:
        repeats = 20 if n <= 1024 else 5
        cases += compress_cases(n, device, repeats)
        cases += optimizer_cases(n, device, repeats)
    # a quick (smoke-test) run never overwrites the stored full results
    path = write_results("compress-quick" if args.quick else "compress", device, cases, quick=args.quick,
                         dtype="float32",
                         note="median time of one call; SVD is the full thin SVD of the same matrix")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
