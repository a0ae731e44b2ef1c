"""The stored benchmark results that the book's figures read.

``make bench`` (the scripts in the repository's ``benchmarks/`` folder) measures
clipping, optimizers, sparse updates, spectral norms, compression and the case
study, and writes one JSON file per benchmark and device to
``gradlab/benchmark_results/<device>/<name>.json``, where ``<device>`` is
``cpu`` or ``cuda-<gpu name>``. The files ship inside the package, so a chapter
opened alone (in Colab, or downloaded) plots the same stored results as the
book. Each file records the device's name, the torch version, the sizes and the
median of repeated timings; see the benchmarks appendix for what each measures.
:func:`plot_optim` and :func:`plot_compress` draw the figures of the optimizer
and compression chapters from them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["RESULTS", "available", "load", "plot_optim", "plot_compress"]

#: The folder of stored results inside the installed package.
RESULTS = Path(str(resources.files("gradlab") / "benchmark_results"))


def _stored(name: str = "*") -> list[Path]:
    # a --quick smoke run writes <name>-quick.json: never a stored result
    return sorted(p for p in RESULTS.glob(f"*/{name}.json") if not p.stem.endswith("-quick"))


def available() -> dict[str, list[str]]:
    """The stored results: benchmark name -> the device folders that hold one
    (``cpu`` first, then GPUs in alphabetical order)."""
    out: dict[str, list[str]] = {}
    for path in _stored():
        out.setdefault(path.stem, []).append(path.parent.name)
    return {k: sorted(v, key=lambda d: (d != "cpu", d)) for k, v in sorted(out.items())}


def load(name: str) -> dict[str, dict]:
    """Every stored result of the benchmark ``name`` (``"clip"``, ``"optim"``,
    ``"sparse"``, ``"spectral"``, ``"compress"``, ``"case_study"``), keyed by
    device folder, ``cpu`` first. An empty dict when none is stored; an unknown
    name raises ``ValueError`` listing the known ones."""
    if not isinstance(name, str) or not name or "/" in name or "*" in name:
        raise ValueError(f"name must be a benchmark's name such as 'clip', got {name!r}")
    found = {p.parent.name: json.loads(p.read_text()) for p in _stored(name)}
    if not found and name not in _known():
        raise ValueError(f"no benchmark called {name!r}; stored ones: {', '.join(sorted(_known()))}")
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "cpu", kv[0])))


def _known() -> set[str]:
    return {p.stem for p in _stored()}


def plot_optim(ax) -> list[str]:
    """Median Adam step time per parameter count (benchmark ``optim``), one line
    style per device and a colour per implementation, with the time that 28 bytes
    per parameter take at the measured copy bandwidth; returns the devices drawn
    (empty when none are stored)."""
    results = load("optim")
    styles = ["-", "--", ":", "-."]
    for k, (slug, rec) in enumerate(results.items()):
        impls = sorted({c["impl"] for c in rec["cases"]} - {"copy (reference)"})
        for j, impl in enumerate(impls):
            pts = sorted((c["params"], c["median_s"]) for c in rec["cases"] if c["impl"] == impl)
            ax.plot([p for p, _ in pts], [t for _, t in pts], styles[k % 4], marker="o", ms=3,
                    color=f"C{j}", label=f"{impl} ({slug})")
        ideal = sorted((c["params"], c["ideal_adam_s"]) for c in rec["cases"]
                       if c["impl"] == "copy (reference)")
        ax.plot([p for p, _ in ideal], [t for _, t in ideal], styles[k % 4], color="0.3", lw=2,
                label=f"28 bytes/param at copy bandwidth ({slug})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("time of one Adam step (s)")
    return list(results)


def plot_compress(ax, record: dict) -> None:
    """Compression-step time against matrix size for one stored ``compress``
    result (one device): PowerSGD at each rank against a full SVD."""
    from gradlab import plot

    cases = [c for c in record["cases"] if c["kind"] == "compress"]
    for impl in sorted({c["impl"] for c in cases}, key=lambda s: (s.startswith("SVD"), len(s), s)):
        pts = [c for c in cases if c["impl"] == impl]
        style = {"color": "0.3", "linestyle": "--"} if impl.startswith("SVD") else {}
        ax.plot([c["n"] for c in pts], [c["median_s"] * 1e3 for c in pts], marker="o", label=impl, **style)
    ax.set_xscale("log", base=2)
    plot.log_y(ax, "time per step (ms)")
    ax.set_xlabel("matrix size n (n x n, float32)")
    ax.set_title(f"{record['device']} (torch {record['torch']})", fontsize=9)
