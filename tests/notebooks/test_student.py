"""`make student`: solution-free notebooks that keep every exercise and still run."""

from __future__ import annotations

import re

import jupytext
import pytest

from tests.notebooks.conftest import chapter_sources
from tests.notebooks.standalone import run_alone
from tools.nbtools import student_version

SOURCES = [p for p in chapter_sources() if re.match(r"\d\d_", p.stem)]  # chapters with exercises


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_student_version_drops_solutions_keeps_exercises(md):
    full = md.read_text()
    nb = student_version(md)
    text = "\n".join(c.source for c in nb.cells)
    assert "{solution" not in text, "a solution survived"
    assert text.count("{exercise}") == full.count("{exercise}") >= 3, "exercises must all be kept (>= 3)"
    full_code = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    kept = [c.source for c in nb.cells if c.cell_type == "code"]
    assert len(kept) < len(full_code) or "{solution-start}" not in full
    for stub in re.findall(r"YOUR CODE HERE", full):
        assert stub in text
    # the parameters cell is kept, so papermill can still run the student notebook
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.notebook
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_student_notebook_executes(md, wheel, scratch_home, tmp_path):
    """Without solutions every chapter still runs in quick mode, alone in an empty directory
    with gradlab from its wheel (as a student gets it): the checks report NOT YET instead of
    failing, and no later cell needs a removed solution."""
    _, site = wheel
    notebook = tmp_path / f"{md.stem}.ipynb"
    jupytext.write(student_version(md), notebook, fmt="ipynb")
    nb, _ = run_alone(notebook, tmp_path / "alone", site, scratch_home, {"quick": True, "device": "cpu"})
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "NOT YET" in printed and "not written yet" in printed
