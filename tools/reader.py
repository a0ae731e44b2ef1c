"""Reader and student notebooks from the chapters' MyST sources.

A chapter's source ``chapters/X.md`` is written for the book: citations
(``{cite:p}``), cross-references (``{doc}``, ``{ref}``, ``{numref}``),
sphinx-exercise blocks and admonitions are MyST syntax that plain Jupyter and
Colab show as raw text. This module turns a source into a notebook that reads
well where readers open it:

* citations read "Author (year)" and link to the online bibliography;
* cross-references link to the online book's pages, figures and exercises;
* exercises become numbered headed sections, one exercise per cell group;
* solutions are collapsed (reader) or removed (student, with an answer cell
  after every written exercise);
* admonitions become block quotes, figure captions follow their figure;
* code cells are the source's code cells, in order, with the outputs of an
  execution when one is given (the stored ``chapters/X.ipynb``).

``reader_notebook(source, executed)`` is what ``make notebooks`` writes to
``chapters/X.ipynb`` (what Colab, Binder and the download links open);
``student_notebook(source)`` is what ``make student`` writes. The converter
raises on any MyST construct it does not know, so that none reaches a reader.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"

ADMONITIONS = {"admonition", "note", "tip", "hint", "important", "warning", "caution", "attention",
               "danger", "error", "seealso"}
# MyST syntax that must never reach a reader: a role, a directive fence, a target line.
MYST_SYNTAX = re.compile(r"\{[a-z][\w:-]*\}`|^(`{3,}|:{3,})\{[\w-]+\}|^\([\w-]+\)=\s*$", re.M)
SOLUTION_TAG = "solution"


# --------------------------------------------------------------------------- the book's site

@cache
def site() -> dict[str, str]:
    """The online book's base URL (``html.baseurl`` in _config.yml) and the repository."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].rstrip("/")
    base = config.get("html", {}).get("baseurl")
    if not base:
        owner, name = repo.split("/")[-2:]
        base = f"https://{owner}.github.io/{name}/"
    return {"base": base.rstrip("/") + "/", "repo": repo, "branch": config["repository"].get("branch", "main")}


def page_url(doc: str, anchor: str | None = None) -> str:
    """The online page of ``chapters/<doc>`` (and an anchor on it)."""
    return f"{site()['base']}chapters/{doc}.html" + (f"#{anchor}" if anchor else "")


@cache
def _titles() -> dict[str, str]:
    titles = {}
    for md in CHAPTERS.glob("*.md"):
        match = re.search(r"^# (.+)$", md.read_text(), re.M)
        titles[md.stem] = match.group(1).strip() if match else md.stem
    return titles


@cache
def _bibliography() -> dict[str, tuple[str, str]]:
    """BibTeX key -> ("Author", "year") in the book's author-year style."""
    from pybtex.database import parse_file

    entries = parse_file(str(CHAPTERS / "references.bib")).entries
    out = {}
    for key, entry in entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        last = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]
        if len(last) == 1:
            who = last[0]
        elif len(last) == 2:
            who = f"{last[0]} and {last[1]}"
        elif last:
            who = f"{last[0]} et al."
        else:
            who = entry.fields.get("title", key).strip("{}")
        out[key] = (who, entry.fields.get("year", "n.d."))
    return out


def _cite_anchor(key: str) -> str:
    # the id sphinxcontrib-bibtex gives an entry with bibtex_cite_id = "cite-{key}" (docutils make_id)
    from docutils.nodes import make_id

    return make_id(f"cite-{key}")


# --------------------------------------------------------------------------- labels of a chapter

@dataclass
class Labels:
    """What ``{ref}``/``{numref}`` can point at, collected from every chapter: exercises and
    figures with their numbers, and explicit targets."""

    exercises: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # label -> (doc, n, title)
    figures: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (doc, n)
    targets: dict[str, str] = field(default_factory=dict)  # label -> doc


_FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}(?P<arg>[^\n]*)$")


@cache
def labels() -> Labels:
    out = Labels()
    for md in sorted(CHAPTERS.glob("*.md")):
        text = md.read_text()
        for n, match in enumerate(re.finditer(r"^(`{3,}|:{3,})\{exercise\}([^\n]*)\n((?::[\w-]+:[^\n]*\n)*)",
                                              text, re.M), start=1):
            label = re.search(r"^:label:\s*(\S+)", match.group(3), re.M)
            if label:
                out.exercises[label.group(1)] = (md.stem, n, match.group(2).strip())
        if text.startswith("---\njupytext:"):
            figures = [c for c in jupytext.reads(text, fmt="md:myst").cells
                       if c.cell_type == "code" and "figure" in c.metadata.get("mystnb", {})]
            for n, cell in enumerate(figures, start=1):
                name = cell.metadata["mystnb"]["figure"].get("name")
                if name:
                    out.figures[name] = (md.stem, n)
        for target in re.findall(r"^\(([\w-]+)\)=\s*$", text, re.M):
            out.targets[target] = md.stem
    return out


# --------------------------------------------------------------------------- roles

# a role, or an inline code span (whose content is literal): roles are tried first at each
# position, so the backticks of a role are never taken for a code span
_ROLE_OR_CODE = re.compile(r"\{(?P<role>[a-z][\w:-]*)\}`(?P<body>[^`]*)`|(?P<code>``[^`]+``|`[^`\n]+`)")


def _text_and_target(body: str) -> tuple[str | None, str]:
    match = re.fullmatch(r"\s*(.*?)\s*<([^<>]+)>\s*", body, re.S)
    if match:
        return match.group(1), match.group(2).strip()
    return None, body.strip()


def _cite(keys: str, textual: bool) -> str:
    bib = _bibliography()
    parts = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in bib:
            raise ValueError(f"unknown citation key {key!r} (not in chapters/references.bib)")
        who, year = bib[key]
        url = page_url("bibliography", _cite_anchor(key))
        parts.append(f"[{who} ({year})]({url})" if textual else f"[{who}, {year}]({url})")
    return "; ".join(parts) if textual else "(" + "; ".join(parts) + ")"


def _role(role: str, body: str, doc: str) -> str:
    if role in ("cite:p", "cite", "cite:ps"):
        return _cite(body, textual=False)
    if role in ("cite:t", "cite:ts"):
        return _cite(body, textual=True)
    text_, target = _text_and_target(body)
    if role == "doc":
        target = target.removesuffix(".md").split("/")[-1]
        if target not in _titles():
            raise ValueError(f"{{doc}} points at {target!r}, which is not a page in chapters/")
        return f"[{text_ or _titles()[target]}]({page_url(target)})"
    if role == "download":
        url = f"{site()['repo']}/blob/{site()['branch']}/chapters/{target}"
        return f"[{text_ or target}]({url})"
    if role in ("ref", "numref"):
        known = labels()
        if target in known.exercises:
            where, n, title = known.exercises[target]
            label = text_.replace("%s", str(n)) if text_ else f"Exercise {n}"
            return f"[{label}]({page_url(where, target)})"
        if target in known.figures:
            where, n = known.figures[target]
            label = text_.replace("%s", str(n)) if text_ else f"Fig. {n}"
            return f"[{label}]({page_url(where, target)})"
        if target in known.targets:
            return f"[{text_ or target}]({page_url(known.targets[target], target)})"
        raise ValueError(f"{{{role}}} points at {target!r}, which no chapter defines")
    if role == "math":
        return f"${body}$"
    raise ValueError(f"unknown MyST role {{{role}}} in chapters/{doc}.md: teach tools/reader.py about it")


def convert_roles(text: str, doc: str) -> str:
    """Replace every MyST role in ``text`` (markdown of chapter ``doc``); code spans stay."""
    return _ROLE_OR_CODE.sub(lambda m: m.group("code") or _role(m.group("role"), m.group("body"), doc), text)


# --------------------------------------------------------------------------- directives

@dataclass
class Block:
    """One directive: its name, argument, options and content lines."""

    name: str
    arg: str
    options: dict[str, str]
    content: str


def _split_directives(text: str) -> list[str | Block]:
    """Split markdown into plain text and (top-level) directive blocks."""
    lines = text.split("\n")
    out: list[str | Block] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            plain.append(lines[i])
            i += 1
            continue
        fence = match.group("fence")
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed directive {lines[i]!r}")
        body = lines[i + 1:j]
        options = {}
        while body and re.match(r"^:[\w-]+:", body[0]):
            key, _, value = body.pop(0)[1:].partition(":")
            options[key] = value.strip()
        if plain:
            out.append("\n".join(plain))
            plain = []
        out.append(Block(match.group("name"), match.group("arg").strip(), options, "\n".join(body).strip("\n")))
        i = j + 1
    if plain:
        out.append("\n".join(plain))
    return out


def _quote(text: str) -> str:
    return "\n".join("> " + line if line.strip() else ">" for line in text.split("\n"))


def _collapsed(summary: str, text: str) -> str:
    return f"<details>\n<summary><b>{summary}</b> (click to show)</summary>\n\n{text}\n\n</details>"


@dataclass
class Context:
    """State carried through one chapter: exercise numbers and whether we are inside
    a gated solution (``{solution-start}`` .. ``{solution-end}``, which spans cells)."""

    doc: str
    student: bool
    exercise_no: int = 0
    in_solution: bool = False


RUN_ORDER = ("> **Before the exercises:** run every cell above this one first (Jupyter: *Run > Run All "
             "Above Selected Cell*; Colab: *Runtime > Run before*). The exercises use the chapter's "
             "imports, data and results.")
ANSWER_CELL = "**Your answer.** *(Double-click this cell and write your answer here.)*"


def convert_markdown(text: str, ctx: Context, *, coding_follows: bool = False) -> list[str]:
    """One markdown cell of the source -> markdown cells: an exercise starts a new cell;
    solutions are collapsed (reader) or dropped (student); for students an answer cell
    follows every written exercise (``coding_follows``: the code cell after this markdown
    is the last exercise's stub, so that exercise is a coding one)."""
    text = re.sub(r"^\(([\w-]+)\)=\s*$", r'<a id="\1"></a>', text, flags=re.M)
    pieces = _split_directives(text)
    last_exercise = max((i for i, p in enumerate(pieces) if isinstance(p, Block) and p.name == "exercise"),
                        default=None)
    cells: list[list[str]] = [[]]
    for k, piece in enumerate(pieces):
        if isinstance(piece, str):
            if not piece.strip():
                continue
            converted = convert_roles(piece, ctx.doc)
            if ctx.in_solution:
                if not ctx.student:
                    cells[-1].append(_collapsed("Solution (text)", converted))
            else:
                cells[-1].append(converted)
            continue
        if piece.name == "solution-start":
            ctx.in_solution = True
            if not ctx.student:
                cells[-1].append("**Solution.** The book's solution follows, up to *End of the solution*; "
                                 "its text and code cells are collapsed (click to show).")
            continue
        if piece.name == "solution-end":
            ctx.in_solution = False
            if not ctx.student:
                cells[-1].append("*End of the solution.*")
            continue
        inner = "\n\n".join(convert_markdown(piece.content, ctx)) if piece.content.strip() else ""
        if piece.name == "exercise":
            ctx.exercise_no += 1
            label = piece.options.get("label")
            anchor = f'<a id="{label}"></a>\n\n' if label else ""
            title = f": {piece.arg}" if piece.arg else ""
            if any(part.strip() for part in cells[-1]):
                cells.append([])
            if ctx.exercise_no == 1:  # before the first exercise: how to run one on its own
                cells[-1].append(RUN_ORDER)
                cells.append([])
            cells[-1].extend([f"{anchor}### Exercise {ctx.exercise_no}{title}", inner])
            if ctx.student and not (coding_follows and k == last_exercise):
                cells.append([ANSWER_CELL])
                cells.append([])
        elif piece.name == "solution":
            if not ctx.student:
                cells[-1].append(_collapsed("Solution", inner))
        elif piece.name in ADMONITIONS:
            title = piece.arg if piece.name == "admonition" else piece.name.capitalize()
            cells[-1].append(_quote(f"**{title}**\n\n{inner}" if title else inner))
        else:
            raise ValueError(f"unknown MyST directive {{{piece.name}}} in chapters/{ctx.doc}.md: "
                             "teach tools/reader.py about it")
    return ["\n\n".join(p for p in cell if p.strip()).strip() for cell in cells if any(p.strip() for p in cell)]


# --------------------------------------------------------------------------- notebooks

def _is_stub(cell) -> bool:
    return cell.cell_type == "code" and ("YOUR CODE HERE" in cell.source or "checks.check_" in cell.source)


def _figure_caption(cell) -> str | None:
    figure = cell.metadata.get("mystnb", {}).get("figure")
    if not figure:
        return None
    name = figure.get("name")
    n = labels().figures.get(name, ("", None))[1] if name else None
    caption = " ".join(str(figure.get("caption", "")).split())
    anchor = f'<a id="{name}"></a>\n\n' if name else ""
    return f"{anchor}*Fig. {n}: {caption}*" if n else f"*{caption}*"


def _build(source: Path, *, student: bool, executed: nbformat.NotebookNode | None) -> nbformat.NotebookNode:
    source = Path(source)
    nb = jupytext.read(source)
    cells = nb.cells
    ctx = Context(doc=source.stem, student=student)
    outputs = None
    if executed is not None:
        ex_code = [c for c in executed.cells if c.cell_type == "code"
                   and "injected-parameters" not in c.metadata.get("tags", [])]
        if [c.source for c in ex_code] != [c.source for c in cells if c.cell_type == "code"]:
            raise ValueError(f"the executed notebook's code cells are not those of {source.name}")
        outputs = iter(ex_code)
    out_cells = []
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            following = next((c for c in cells[i + 1:] if c.cell_type == "code" or c.source.strip()), None)
            coding = following is not None and _is_stub(following)
            out_cells.extend(nbformat.v4.new_markdown_cell(t)
                             for t in convert_markdown(cell.source, ctx, coding_follows=coding))
            continue
        if cell.cell_type != "code":
            raise ValueError(f"unexpected {cell.cell_type} cell in {source.name}")
        ran = next(outputs) if outputs is not None else None
        if ctx.in_solution and student:
            continue
        metadata = {k: v for k, v in cell.metadata.items() if k in ("tags", "mystnb")}
        tags = metadata.get("tags", [])
        if ctx.in_solution:
            metadata["tags"] = [*tags, SOLUTION_TAG]
        if ctx.in_solution or "hide-input" in tags or "hide-cell" in tags:
            metadata["jupyter"] = {"source_hidden": True}
        code = nbformat.v4.new_code_cell(cell.source, metadata=metadata)
        if ran is not None:
            code.outputs = ran.outputs
            code.execution_count = ran.execution_count
        out_cells.append(code)
        caption = _figure_caption(cell)
        if caption:
            out_cells.append(nbformat.v4.new_markdown_cell(caption))
    if ctx.in_solution:
        raise ValueError(f"{source.name}: a {{solution-start}} without its {{solution-end}}")
    out = nbformat.v4.new_notebook(cells=out_cells)
    out.metadata = {
        "kernelspec": nb.metadata.get("kernelspec", {"display_name": "Python 3 (ipykernel)",
                                                      "language": "python", "name": "python3"}),
        "language_info": {"name": "python"},
        "gradlab": {"source": f"chapters/{source.name}", "form": "student" if student else "reader",
                    "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()},
    }
    if executed is not None and "language_info" in executed.metadata:
        out.metadata["language_info"] = executed.metadata["language_info"]
    for n, c in enumerate(out.cells):  # stable ids: the same source gives the same notebook
        c.id = hashlib.sha1(f"{source.stem}:{n}".encode()).hexdigest()[:12]
    return out


def reader_notebook(source: Path, executed: nbformat.NotebookNode | None = None) -> nbformat.NotebookNode:
    """The reader's notebook of chapter ``source`` (MyST .md), with the outputs of
    ``executed`` (an execution of the same source) when given."""
    return _build(source, student=False, executed=executed)


def student_notebook(source: Path) -> nbformat.NotebookNode:
    """The student's notebook: reader form without solutions or outputs, an answer cell
    after every written exercise."""
    return _build(source, student=True, executed=None)


def myst_leftovers(nb: nbformat.NotebookNode) -> list[str]:
    """MyST syntax left in a notebook's markdown cells (should be none). Code (fenced blocks
    and inline spans) is literal text and may show MyST, e.g. to explain it."""
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = re.sub(r"^(`{3,})(?!\{)[^\n]*\n.*?^\1[ \t]*$", "", cell.source, flags=re.S | re.M)
            text = re.sub(r"``[^`]+``|`[^`\n]+`", "", text)
            found += [m.group(0) for m in MYST_SYNTAX.finditer(text)]
    return found
