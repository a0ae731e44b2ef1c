"""The book's own execution of each chapter reproduces the stored .ipynb outputs.

The book build executes every chapter once at default size (myst-nb writes the
executed notebooks to _build/jupyter_execute); comparing those with the stored
outputs is nbval's check without a second execution. Rules: see nbtools.compare.
"""

from __future__ import annotations

import nbformat
import pytest

from tests.notebooks.conftest import BUILD, chapter_sources
from tools.nbtools import compare

SOURCES = chapter_sources()


@pytest.mark.book
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_outputs_reproduce(md, built_html):
    executed_path = BUILD / "jupyter_execute" / "chapters" / f"{md.stem}.ipynb"
    assert executed_path.exists(), f"{executed_path} missing: the book build did not execute {md.name}"
    executed = nbformat.read(executed_path, as_version=4)
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    problems = compare(executed, stored, executed_by_myst_nb=True)
    assert not problems, "outputs changed (re-run `make notebooks` if intended):\n" + "\n".join(problems)


def _figure_cells(nb) -> list[tuple[int, str]]:
    return [(i, c.metadata["mystnb"]["figure"].get("name", "?")) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "figure" in c.metadata.get("mystnb", {})]


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.book
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_figures_rendered(md, built_html):
    """Every cell declared as a figure produced an image in the book's own execution and
    in the stored notebook, and the HTML page shows one image per figure. (A kernel that
    inherits MPLBACKEND=Agg draws nothing: the book once built without a single figure.)"""
    executed = nbformat.read(BUILD / "jupyter_execute" / "chapters" / f"{md.stem}.ipynb", as_version=4)
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    for label, nb in (("book build", executed), ("stored .ipynb", stored)):
        missing = [name for i, name in _figure_cells(nb) if not _has_image(nb.cells[i])]
        assert not missing, f"{md.stem}: figure cells without an image in the {label}: {missing}"
    html = (built_html / "chapters" / f"{md.stem}.html").read_text()
    figures = len(_figure_cells(executed))
    images = html.count('src="../_images/')
    assert images >= figures, f"{md.stem}: {figures} figures declared, {images} images in the HTML page"


DEFAULT_BUDGET_S = 120.0  # default size: at most 2 minutes on a 2-core CPU


@pytest.mark.book
def test_default_size_within_budget(built_html):
    """The book build's execution table: every chapter's time is recorded in
    _build/default_times.json; over the 2-minute budget is a warning, and only a chapter
    over 6x its budget fails (a busy shared CI machine must not fail the tests)."""
    import json
    import re
    import warnings

    from tests.notebooks.standalone import FAIL_FACTOR

    page = (built_html / "chapters" / "execution.html").read_text()
    times = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if len(cells) >= 4 and cells[0].startswith("chapters/"):
            times[cells[0]] = float(cells[3])
    assert times, "no execution table on chapters/execution.html"
    executed = {f"chapters/{p.stem}" for p in SOURCES}
    assert executed <= set(times), f"chapters missing from the execution table: {executed - set(times)}"
    (BUILD / "default_times.json").write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    over = {doc: t for doc, t in times.items() if t > DEFAULT_BUDGET_S}
    if over:
        warnings.warn(f"default-size execution over the {DEFAULT_BUDGET_S:.0f} s budget: {over}", stacklevel=1)
    slow = {doc: t for doc, t in times.items() if t > FAIL_FACTOR * DEFAULT_BUDGET_S}
    assert not slow, f"default-size execution over {FAIL_FACTOR:.0f} x {DEFAULT_BUDGET_S:.0f} s: {slow}"
