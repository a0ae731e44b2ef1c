"""The notebooks readers open (chapters/X.ipynb: Colab, Binder, downloads) show no MyST
markup and are up to date with their sources (tools/reader.py)."""

from __future__ import annotations

import nbformat
import pytest

from tests.notebooks.conftest import chapter_sources
from tools.reader import Context, convert_markdown, convert_roles, myst_leftovers, reader_notebook

SOURCES = chapter_sources()


def _cells(nb):
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_reader_notebook_is_up_to_date_and_free_of_myst(md):
    stored = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    assert stored.metadata.get("gradlab", {}).get("form") == "reader", (
        f"{md.with_suffix('.ipynb').name} is not a reader notebook: run `make notebooks`")
    assert not myst_leftovers(stored), f"MyST syntax in {md.stem}.ipynb: {myst_leftovers(stored)}"
    fresh = reader_notebook(md, stored)  # the stored outputs, the current source
    assert _cells(fresh) == _cells(stored), (
        f"{md.stem}.ipynb is out of date with {md.name}: run `python tools/nbtools.py reader {md}` "
        "(prose only) or `make notebooks`")


def test_roles_become_links_and_code_stays_literal():
    out = convert_roles("As {cite:t}`kingma2015adam` show (see {doc}`04_optimizers`), "
                        "not `{cite:p}` in code.", "01_exploding")
    assert "[Kingma and Ba (2015)](" in out and "bibliography.html#cite-kingma2015adam" in out
    assert "[SGD and its variants](" in out and "chapters/04_optimizers.html)" in out
    assert "`{cite:p}`" in out


def test_exercises_solutions_and_admonitions():
    text = ("Intro.\n\n```{exercise} Title one\n:label: ex-a\n\nDo it.\n```\n\n"
            "```{solution} ex-a\n:class: dropdown\n\nThe answer.\n```\n\n"
            ":::{admonition} Careful\n:class: tip\n\nA note.\n:::\n\n```{exercise} Two\n:label: ex-b\n\nAgain.\n```")
    reader = convert_markdown(text, Context("01_exploding", student=False))
    assert reader[0] == "Intro."
    assert any(c.startswith('<a id="ex-a"></a>\n\n### Exercise 1: Title one') for c in reader)
    assert any("<details>" in c and "The answer." in c for c in reader)
    assert any("> **Careful**" in c for c in reader)
    student = convert_markdown(text, Context("01_exploding", student=True))
    assert not any("The answer." in c for c in student)
    assert sum("**Your answer.**" in c for c in student) == 2  # both are written exercises
    with pytest.raises(ValueError, match="unknown MyST directive"):
        convert_markdown("```{mystery}\nx\n```", Context("01_exploding", student=False))
    with pytest.raises(ValueError, match="unknown MyST role"):
        convert_roles("{mystery}`x`", "01_exploding")
