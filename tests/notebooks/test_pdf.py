"""The PDF edition (`make pdf`): built from the book build's executed chapters, complete, readable.

`make pdf` runs Sphinx's LaTeX builder on the environment the HTML build left in
_build/.doctrees, then XeLaTeX (latexmk). These tests read the result with
poppler-utils (pdftotext, pdfimages, pdfinfo): every title in _toc.yml is in its
text, it holds at least as many images as the executed chapters have figures,
every exercise is followed by its solution, every reference is listed, no glyph
went missing, and the LaTeX build executed nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.notebooks.conftest import BUILD, HTML, ROOT, toc_files

pytestmark = pytest.mark.pdf

NAME = "taming-exploding-gradients"
LATEX = BUILD / "pdf" / "_build" / "latex"  # make pdf: jupyter-book --path-output _build/pdf
PDF = HTML / f"{NAME}.pdf"  # the published copy, linked from the front page
HIDDEN = {"remove-cell", "remove-output", "hide-cell", "hide-output"}  # outputs the PDF leaves out
# LaTeX warnings that come from sphinx-jupyterbook-latex's document class
# (jupyterBook.cls), not from the book: inputenc under XeLaTeX, pgfplots without a
# compat level, and mathrsfs asked for a size its fonts do not come in.
KNOWN_LATEX_WARNINGS = (
    "Package inputenc Warning: inputenc package ignored with utf8 based engines",
    "Package pgfplots Warning: running in backwards compatibility mode",
    "LaTeX Font Warning: Font shape `U/rsfs/m/n' in size",
    "LaTeX Font Warning: Size substitutions with differences",
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make tex-deps` (poppler-utils)")
    return path


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _normal(text: str) -> str:
    """Lower case, one space between words, no line-end hyphenation, plain quotes."""
    text = re.sub(r"-\n(?=[a-z])", "", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.split()).lower()


@pytest.fixture(scope="module")
def pdf() -> str:
    if not PDF.exists():
        pytest.fail(f"{PDF.relative_to(ROOT)} missing: run `make pdf` after `make book` (make test does)")
    return str(PDF)


@pytest.fixture(scope="module")
def text(pdf) -> str:
    return _run(_tool("pdftotext"), "-enc", "UTF-8", pdf, "-")


def _title(doc: str) -> str:
    """The first level-1 heading of a toc document's MyST source."""
    for line in (ROOT / f"{doc}.md").read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise AssertionError(f"{doc}.md has no '# ' title")


def _executed(doc: str) -> dict | None:
    path = BUILD / "jupyter_execute" / f"{doc}.ipynb"
    return json.loads(path.read_text()) if path.exists() else None


def _figures() -> int:
    """Image outputs of the executed chapters that the PDF shows (not in hidden outputs)."""
    count = 0
    for doc in toc_files():
        nb = _executed(doc)
        for cell in (nb or {}).get("cells", []):
            if cell["cell_type"] != "code" or HIDDEN & set(cell.get("metadata", {}).get("tags", [])):
                continue
            count += sum(1 for o in cell.get("outputs", [])
                         if {"image/png", "image/jpeg", "application/pdf"} & set(o.get("data", {})))
    return count


def test_pdf_is_the_latex_build_copied_into_the_site(pdf):
    built = LATEX / f"{NAME}.pdf"
    assert built.exists(), f"{built} missing"
    assert built.read_bytes() == PDF.read_bytes(), "the PDF in _build/html is not the one just built"
    intro = (HTML / "chapters" / "intro.html").read_text()
    assert f'href="../{NAME}.pdf"' in intro, "the front page does not link the PDF"


def test_latex_build_executed_nothing():
    """Sphinx's LaTeX builder reused the HTML build's environment: nothing read, nothing executed."""
    log = (BUILD / "latex-sphinx.log").read_text(errors="replace")
    assert "0 added, 0 changed, 0 removed" in log, "the LaTeX build re-read documents"
    assert "Executing notebook" not in log, "the LaTeX build executed chapters a second time"
    assert "loading pickled environment... done" in re.sub(r"\x1b\[[0-9;]*m", "", log)


def test_every_title_in_the_toc_is_in_the_pdf(text):
    """Each title at least twice: in the table of contents and as its chapter's heading."""
    body = _normal(text)
    missing = [(doc, _title(doc)) for doc in toc_files() if body.count(_normal(_title(doc))) < 2]
    assert not missing, f"titles not found (twice) in the PDF text: {missing}"


def test_pdf_has_every_figure(pdf):
    figures = _figures()
    assert figures >= 20, f"only {figures} figures in the executed chapters: was the book built?"
    rows = _run(_tool("pdfimages"), "-list", pdf).splitlines()[2:]
    images = sum(1 for row in rows if row.split()[2] == "image")
    assert images >= figures, f"{images} images in the PDF, {figures} figures in the executed chapters"


def test_page_count_is_plausible(pdf):
    info = _run(_tool("pdfinfo"), pdf)
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    docs = len(toc_files())
    # at least a page per document and per two figures; a runaway (a table or an output
    # printed one character per line) would show as thousands
    assert docs + _figures() // 2 <= pages <= 1000, f"{pages} pages for {docs} documents"


def test_every_exercise_is_followed_by_its_solution(text):
    sources = [ROOT / f"{doc}.md" for doc in toc_files()]
    exercises = sum(len(re.findall(r"^`{3,}\{exercise\}", p.read_text(), re.M)) for p in sources)
    body = " ".join(text.split())
    shown = {int(m.group(1)): m.start() for m in re.finditer(r"(?<!Solution to )Exercise (\d+) \(", body)}
    solved = {int(m.group(1)): m.start() for m in re.finditer(r"Solution to Exercise (\d+) \(", body)}
    assert exercises >= 10
    assert sorted(shown) == list(range(1, exercises + 1)), f"exercise headings {sorted(shown)}"
    assert sorted(solved) == sorted(shown), f"solutions printed for exercises {sorted(solved)}"
    late = [n for n in shown if not shown[n] < solved[n] < shown.get(n + 1, len(body))]
    assert not late, f"solutions not right after their exercises: {late}"


def test_bibliography_lists_every_reference(text):
    bib = (ROOT / "chapters" / "references.bib").read_text()
    entries = len(re.findall(r"^@\w+\{", bib, re.M))
    labels = {int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", text, re.M)}
    assert labels == set(range(1, entries + 1)), f"bibliography labels {sorted(labels)}, {entries} entries"


def test_no_missing_glyphs_and_only_known_latex_warnings():
    log = (LATEX / f"{NAME}.log").read_text(errors="replace")
    missing = sorted(set(re.findall(r"Missing character: There is no (.+?) in font", log)))
    assert not missing, f"characters the fonts lack (printed as nothing): {missing}"
    warnings = [line for line in log.splitlines() if re.search(r"Warning:", line)
                and not line.startswith(KNOWN_LATEX_WARNINGS)]
    assert not warnings, "new LaTeX warnings:\n" + "\n".join(warnings[:20])


# Overfull lines in the PDF that the chapters' markup causes, by a piece of their TeX
# (none now; an entry here is a fix owed to a chapter).
KNOWN_OVERFULL: tuple[str, ...] = ()


def test_nothing_runs_into_the_margin():
    """No line (text, table, display math) sticks out of the text block by more than 5 pt.

    Code and outputs wrap (Sphinx's verbatimwrapslines), so these are prose, tables and math.
    """
    log = (LATEX / f"{NAME}.log").read_text(errors="replace")
    tex = (LATEX / f"{NAME}.tex").read_text().splitlines()
    wide = []
    for m in re.finditer(r"Overfull \\hbox \(([\d.]+)pt too wide\) (?:detected at line (\d+)|"
                         r"in paragraph at lines (\d+)--(\d+))", log):
        if float(m.group(1)) <= 5:
            continue
        end = int(m.group(2) or m.group(4))
        start = int(m.group(3)) if m.group(3) else end - 8
        source = "\n".join(tex[max(start - 1, 0):end])
        if not any(known in source for known in KNOWN_OVERFULL):
            wide.append(f"{m.group(1)} pt at {NAME}.tex:{start}-{end}: {source[-300:]}")
    assert not wide, "lines wider than the page:\n" + "\n\n".join(wide)


def test_config_builds_the_pdf_named_here():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["latex"]["latex_documents"]["targetname"] == f"{NAME}.tex"
