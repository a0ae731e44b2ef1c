"""Running a notebook the way a reader does: alone, with gradlab installed from a wheel.

A reader opens one chapter's ``.ipynb`` (Colab's "Open in Colab", a download,
a student's copy) with nothing of the repository around it. :func:`build_wheel`
builds gradlab's wheel from a copy of the sources and installs it into a
folder of its own; :func:`run_alone` copies a notebook into a fresh empty
directory and executes it there with papermill, the kernel importing gradlab
from that folder (``PYTHONPATH`` comes before the virtualenv's editable
install), never from ``lib/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from tools.nbtools import ROOT

BUILD = ROOT / "_build"
TIMES = BUILD / "quick_times.json"
# A run is slow above its budget (reported as a warning and in quick_times.json); it fails
# only far beyond it, where something hangs: a busy shared CI machine must not fail the tests.
FAIL_FACTOR = 6.0  # a 2-core machine running two tests at once and more besides reached 4.7x


def build_wheel(workdir: Path) -> tuple[Path, Path]:
    """Build gradlab's wheel from a copy of the sources; install it (without
    dependencies) into ``workdir/site``. Returns ``(wheel, site)``."""
    src = workdir / "src"
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = workdir / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("gradlab-*.whl")
    site = workdir / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    found = subprocess.run([sys.executable, "-c", "import gradlab; print(gradlab.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(site)}, cwd=workdir,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).is_relative_to(site), f"gradlab imported from {found}, not from the wheel in {site}"
    return wheel, site


def run_alone(notebook: Path, workdir: Path, site: Path, env: dict[str, str], parameters: dict) -> tuple:
    """Copy ``notebook`` alone into the empty ``workdir`` and execute it there with
    papermill (kernel environment ``env`` plus ``PYTHONPATH=site``). Returns the
    executed notebook and the wall time in seconds."""
    import papermill

    workdir.mkdir(parents=True)
    assert not any(workdir.iterdir())
    copy = workdir / notebook.name
    shutil.copy(notebook, copy)
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["PYTHONPATH"] = str(site)
    try:
        t0 = time.perf_counter()
        nb = papermill.execute_notebook(str(copy), str(workdir / f"{notebook.stem}.out.ipynb"),
                                        parameters=parameters, kernel_name="python3", cwd=str(workdir),
                                        progress_bar=False, log_output=False)
        elapsed = time.perf_counter() - t0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb, elapsed


def stderr_outputs(nb) -> list[str]:
    return [o.text[:300] for c in nb.cells for o in c.get("outputs", [])
            if o.output_type == "stream" and o.name == "stderr"]


def record_time(key: str, seconds: float, budget: float) -> None:
    """Write the time to _build/quick_times.json (under a lock: pytest-xdist runs tests in
    parallel processes); warn above the budget, fail far above it."""
    import fcntl

    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "quick_times.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
        times[key] = {"seconds": round(seconds, 1), "budget_s": budget}
        TIMES.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    if seconds > budget:
        warnings.warn(f"{key} took {seconds:.0f} s in quick mode, over its {budget:.0f} s budget "
                      f"(fails only above {FAIL_FACTOR:.0f}x)", stacklevel=2)
    assert seconds <= FAIL_FACTOR * budget, (
        f"{key} took {seconds:.0f} s in quick mode, over {FAIL_FACTOR:.0f} x its {budget:.0f} s budget: "
        "something hangs or the chapter grew far beyond its quick size")
