"""`make student`: notebooks without solutions that keep every exercise and still run."""

from __future__ import annotations

import re

import jupytext
import nbformat
import pytest

from tests.notebooks.conftest import chapter_sources
from tests.notebooks.standalone import run_alone
from tools.nbtools import student_sources
from tools.reader import ANSWER_CELL, myst_leftovers, student_notebook

SOURCES = [p for p in chapter_sources() if re.match(r"\d\d_", p.stem)]  # chapters with exercises


def test_the_instructors_page_is_not_given_to_students():
    stems = {p.stem for p in student_sources()}
    assert "a3_instructors" not in stems and {p.stem for p in SOURCES} <= stems


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_student_notebook_drops_solutions_keeps_exercises(md):
    full = md.read_text()
    nb = student_notebook(md)
    text = "\n".join(c.source for c in nb.cells)
    assert not myst_leftovers(nb), myst_leftovers(nb)
    assert "Solution" not in text and "solution" not in "".join(str(c.metadata) for c in nb.cells)
    n_exercises = full.count("{exercise}")
    headings = re.findall(r"^### Exercise (\d+)", text, re.M)
    assert n_exercises >= 3 and [int(h) for h in headings] == list(range(1, n_exercises + 1))
    # one exercise per cell group: no markdown cell holds two exercises
    assert all(len(re.findall(r"^### Exercise", c.source, re.M)) <= 1 for c in nb.cells)
    # every stub the chapter gives survives; every solution code cell is gone
    for stub in re.findall(r"YOUR CODE HERE", full):
        assert stub in text
    source_code = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    kept = [c.source for c in nb.cells if c.cell_type == "code"]
    assert set(kept) <= set(source_code)
    assert len(kept) < len(source_code) or "{solution-start}" not in full
    # written exercises (no stub or check right after them) get an answer cell
    cells = nb.cells
    for i, c in enumerate(cells):
        if c.cell_type == "markdown" and c.source.lstrip("<").find("### Exercise") >= 0:
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            coding = nxt is not None and nxt.cell_type == "code"
            assert coding or nxt.source == ANSWER_CELL, f"no answer cell after {c.source[:80]!r}"
    # papermill can still run it, and nothing is pre-executed
    assert any("parameters" in c.metadata.get("tags", []) for c in cells)
    assert all(not c.get("outputs") for c in cells if c.cell_type == "code")


@pytest.mark.notebook
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_student_notebook_executes(md, wheel, scratch_home, tmp_path):
    """Without solutions every chapter still runs in quick mode, alone in an empty directory
    with gradlab from its wheel (as a student gets it): the checks report NOT YET instead of
    failing, and no later cell needs a removed solution."""
    _, site = wheel
    notebook = tmp_path / f"{md.stem}.ipynb"
    nbformat.write(student_notebook(md), notebook)
    nb, _ = run_alone(notebook, tmp_path / "alone", site, scratch_home, {"quick": True, "device": "cpu"})
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "NOT YET" in printed and "not written yet" in printed
