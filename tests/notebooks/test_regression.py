"""The book's own execution of each chapter reproduces the stored .ipynb outputs.

The book build executes every chapter once at default size (myst-nb writes the
executed notebooks to _build/jupyter_execute); comparing those with the stored
outputs is nbval's check without a second execution. Rules: see nbtools.compare.
"""

from __future__ import annotations

import nbformat
import pytest

from tests.notebooks.conftest import BUILD, chapter_sources
from tests.notebooks.nbtools import compare

SOURCES = chapter_sources()


@pytest.mark.book
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_outputs_reproduce(md, built_html):
    executed_path = BUILD / "jupyter_execute" / "chapters" / f"{md.stem}.ipynb"
    assert executed_path.exists(), f"{executed_path} missing: the book build did not execute {md.name}"
    executed = nbformat.read(executed_path, as_version=4)
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    problems = compare(executed, stored)
    assert not problems, "outputs changed (re-run `make notebooks` if intended):\n" + "\n".join(problems)
