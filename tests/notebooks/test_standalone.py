"""Every chapter runs wherever a reader opens it: its .ipynb copied alone into an empty
directory, gradlab installed from a built wheel (not the repository), quick mode on the CPU.

These are the book's quick runs: each chapter's wall time is written to
_build/quick_times.json against its budget (30 s, or ``gradlab: {quick_budget_s: N}`` in
the chapter's metadata); over budget is a warning, and only a run over 6x its budget
fails (see ``standalone.FAIL_FACTOR``).
"""

from __future__ import annotations

import re
import zipfile

import jupytext
import pytest

from tests.notebooks.conftest import chapter_sources
from tests.notebooks.standalone import record_time, run_alone, stderr_outputs

SOURCES = chapter_sources()
DEFAULT_BUDGET_S = 30.0


def _imported_modules(text: str) -> set[str]:
    mods = set(re.findall(r"^\s*from gradlab\.(\w+) import", text, re.M))
    mods |= set(re.findall(r"^\s*import gradlab\.(\w+)", text, re.M))
    groups = re.findall(r"^\s*from gradlab import \(([^)]*)\)", text, re.M)
    groups += re.findall(r"^\s*from gradlab import ([\w, ]+)$", text, re.M)
    for names in groups:
        mods |= {n.split(" as ")[0].strip() for n in names.split(",") if n.strip()}
    mods |= set(re.findall(r"-m\", \"gradlab\.(\w+)\"", text))  # torchrun -m gradlab.X
    return mods


@pytest.mark.notebook
def test_wheel_holds_what_the_chapters_use(wheel):
    """The wheel has every module a chapter imports or runs, the texts and the stored
    benchmark results (nothing is read from the repository)."""
    whl, _ = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    used = set()
    for md in SOURCES:
        used |= _imported_modules(md.read_text())
    assert {"clip", "compress", "ddp_train"} <= used, used  # the scan finds the chapters' imports
    for module in sorted(used):
        assert f"gradlab/{module}.py" in names or f"gradlab/{module}/__init__.py" in names, (
            f"a chapter uses gradlab.{module}, which the wheel lacks")
    assert any(n.startswith("gradlab/texts/") and n.endswith(".txt") for n in names)
    assert any(n.startswith("gradlab/benchmark_results/cpu/") and n.endswith(".json") for n in names)
    for md in SOURCES:
        assert "../" not in "".join(c.source for c in jupytext.read(md).cells if c.cell_type == "code"), (
            f"{md.name} reads a file outside its own folder: a notebook opened alone must not")


@pytest.mark.notebook
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_runs_alone_in_quick_mode(md, wheel, scratch_home, tmp_path):
    _, site = wheel
    budget = float(jupytext.read(md).metadata.get("gradlab", {}).get("quick_budget_s", DEFAULT_BUDGET_S))
    nb, elapsed = run_alone(md.with_suffix(".ipynb"), tmp_path / "alone", site, scratch_home,
                            {"quick": True, "device": "cpu"})
    assert not stderr_outputs(nb), f"stderr in quick mode: {stderr_outputs(nb)}"
    record_time(md.stem, elapsed, budget)

