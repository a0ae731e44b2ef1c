"""Every chapter follows the template and its stored .ipynb is executed cleanly (that the
.ipynb is the reader notebook of its source is tests/notebooks/test_reader.py)."""

from __future__ import annotations

import re

import jupytext
import pytest
import yaml

from tests.notebooks.conftest import ROOT, chapter_sources, toc_files

SOURCES = chapter_sources()


def test_there_are_chapters():
    assert len(SOURCES) >= 1


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_stored_notebook_is_executed_cleanly(md):
    nb = jupytext.read(md.with_suffix(".ipynb"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "the stored notebook has unexecuted cells"
    for c in code:
        for out in c.get("outputs", []):
            assert out.output_type != "error", f"error output in cell {c.source[:60]!r}"
            assert not (out.output_type == "stream" and out.name == "stderr"), \
                f"stderr output in cell {c.source[:60]!r}: {out.text[:200]}"


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_template(md):
    """Parameters cell with the agreed names, nothing but imports above it, and the Colab cell."""
    nb = jupytext.read(md)
    code = [c for c in nb.cells if c.cell_type == "code"]
    idx = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, "exactly one cell must be tagged 'parameters'"
    params = code[idx[0]].source
    for name, default in (("device", '"auto"'), ("quick", "False"), ("seed", "0")):
        assert re.search(rf"^{name} = {default}(?=\s|$)", params, re.M), f"parameters cell lacks {name} = {default}"
    for c in code[: idx[0]]:
        assert "hide-cell" in c.metadata.get("tags", []), "imports above the parameters are collapsed: tag hide-cell"
        for line in c.source.splitlines():
            assert not line.strip() or line.startswith(("import ", "from ", "#")), \
                f"only imports may come before the parameters cell, found {line!r}"
    before = nb.cells[nb.cells.index(code[idx[0]]) - 1]
    assert before.cell_type == "markdown" and "parameters" in before.source, \
        "one sentence before the parameters cell says what it holds and how to change it"
    setup = code[idx[0] + 1].source
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert "find_spec(\"gradlab\") is None" in setup and "--no-deps" in setup, \
        "the cell after the parameters must install gradlab only when missing, with --no-deps"
    assert f"git+{url}" in setup, "the install cell must use the repository URL from _config.yml"
    assert not re.search(r"install[^\n]*\b(torch|numpy)\b", setup), "the install cell must not install torch/numpy"
    assert "hide-cell" in code[idx[0] + 1].metadata.get("tags", []), \
        "the install cell is plumbing, not content: tag it hide-cell (collapsed in the book, kept in notebooks)"
    text = md.read_text()
    assert "Time to run" in text and "TIME_" not in text, "the measured run time must be filled in"
    assert f"{{download}}`{md.stem}.ipynb <{md.stem}.ipynb>`" in text, \
        "the chapter must offer its executed notebook for download ({download} role)"
    if re.match(r"\d\d_", md.stem):  # numbered chapters; appendices (a1_...) have no exercises
        assert text.count("{exercise}") >= 3 and "{solution" in text, "a chapter ends with >= 3 exercises"
        assert "checks.check_" in text, "at least one coding exercise must have an auto-check"


STATUS = re.compile(r"still to be made|still pending|not yet run on a GPU|is pending|the issue's|"
                    r"runs? (is|are) still owed|\bTODO\b|\bTBD\b", re.I)


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_every_seed_runs_every_claim(md):
    """The robustness run (`make robust`, seed=1) must exercise every assert a default run does:
    no code path that depends on which seed is given, and no project status in the text."""
    code = "\n".join(c.source for c in jupytext.read(md).cells if c.cell_type == "code")
    escape = re.search(r"\bseed\s*(==|!=|is|in)\s*[\d(\[]|if\s+(not\s+)?seed\b", code)
    assert not escape, f"{md.name} branches on the seed ({escape.group(0)!r}): claims must hold for any seed"
    status = STATUS.search(md.read_text())
    assert not status, f"{md.name} speaks of the project's status ({status.group(0)!r}): the book speaks to readers"


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    toc = toc_files()
    for md in SOURCES:
        assert f"chapters/{md.stem}" in toc, f"{md.name} is not in _toc.yml"
    for entry in toc:
        assert (ROOT / f"{entry}.md").exists(), f"_toc.yml names {entry}, which does not exist"


def test_stored_benchmark_page_lists_every_stored_result():
    """The benchmark appendix's outputs are not compared by nbval (device names and
    dates vary), so its staleness is checked here: the stored page must list every
    result file in lib/gradlab/benchmark_results (re-execute it after adding results)."""
    from gradlab import benchmarks

    stored = [(name, d) for name, devices in benchmarks.available().items() for d in devices]
    nb = jupytext.read(ROOT / "chapters" / "a2_benchmarks.ipynb")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    match = re.search(r"(\d+) stored result files", text)
    assert match, "a2_benchmarks.ipynb has no executed listing of the results: run `make notebooks`"
    assert int(match.group(1)) == len(stored), (
        f"a2_benchmarks.ipynb lists {match.group(1)} result files, gradlab/benchmark_results holds {len(stored)}: "
        "re-execute it (python tools/nbtools.py execute chapters/a2_benchmarks.md)")


@pytest.mark.parametrize("md", [p for p in SOURCES if re.match(r"\d\d_", p.stem)], ids=lambda p: p.stem)
def test_every_exercise_says_what_it_runs_on(md):
    """Students run quick mode: an exercise that reads the chapter's numbers says which size
    they come from (or that its check does not depend on it); the others say "pen and paper"."""
    silent = [m.group(1).strip().splitlines()[0]
              for m in re.finditer(r"```\{exercise\}(.*?)\n```", md.read_text(), re.S)
              if not re.search(r"quick|(default|any|either|chapter's)\s+size|pen[-\s]and[-\s]paper",
                                m.group(1), re.I)]
    assert not silent, f"exercises of {md.stem} that do not say which size they expect: {silent}"


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_headings_are_plain_text(md):
    """A heading becomes a PDF bookmark, which cannot hold math or a cross-reference role: a
    fast check of what the PDF build (test_pdf's LaTeX warnings) finds only after minutes."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    bad = [h for h in re.findall(r"^#{1,6} .*$", text, re.M) if re.search(r"\$|\{\w+\}`", h)]
    assert not bad, f"headings with math or roles in {md.name}: {bad}"


@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_time_to_run_line_is_the_stored_measurement(md):
    """The "Time to run" line is written by `tools/nbtools.py times` from the measured run
    times stored with gradlab (benchmark_results/cpu/chapters.json), never by hand."""
    from gradlab import benchmarks
    from tools.nbtools import time_line

    record = benchmarks.load("chapters")["cpu"]
    assert time_line(record, md.stem) in md.read_text(), (
        f"{md.name}'s 'Time to run' line is not the stored measurement: after `make test`, "
        "run `python tools/nbtools.py times`")
