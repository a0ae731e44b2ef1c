"""The benchmark harness behind `make bench`.

Each ``benchmarks/bench_*.py`` script builds a list of cases, times them with
:func:`time_it` and writes one JSON file with :func:`write_results` to
``lib/gradlab/benchmark_results/<device-slug>/<name>.json`` (inside the package,
so that chapters opened alone find them: :mod:`gradlab.benchmarks`): the
device's name, torch version, sizes and the median (and spread) of repeated
timings. Results of a real GPU run are committed under the GPU's slug; a
reader's own CPU run goes beside them, and the book's benchmark page plots both.

Benchmarks report; they never fail on time.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "lib" / "gradlab" / "benchmark_results"
# where write_results puts its JSON: RESULTS, unless --results names another folder
_out_dir = RESULTS


def cli(doc: str, argv: list[str] | None = None,
        extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, torch.device]:
    """The options every benchmark takes: ``--device`` (auto/cpu/cuda[:N]), ``--quick``
    (smallest sizes), ``--threads`` (CPU threads for torch; 0 keeps torch's default) and
    ``--results`` (the folder written to, ``lib/gradlab/benchmark_results`` by default; the smoke
    test passes a temporary one); ``extra`` adds a script's own options. Returns the parsed
    arguments and the resolved device."""
    global _out_dir
    from gradlab import resolve_device

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes only (a smoke test)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (0: torch's default). On a shared 2-core machine "
                         "--threads 1 avoids OpenMP stalls that make small kernels look slow.")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the JSON results (default: lib/gradlab/benchmark_results)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    _out_dir = args.results
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo`` on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_slug(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda-nvidia-h100-80gb-hbm3``: the results folder name."""
    if device.type != "cuda":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, *, repeats: int = 20,
            warmup: int = 3, min_time: float = 0.0) -> dict[str, float]:
    """Median, min and max wall time of ``fn()`` in seconds over ``repeats`` calls
    (after ``warmup`` calls), synchronising the GPU around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def write_results(name: str, device: torch.device, cases: list[dict], **extra) -> Path:
    """Write ``<results>/<device-slug>/<name>.json`` and return its path."""
    out = _out_dir / device_slug(device) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        **extra,
        "cases": cases,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
