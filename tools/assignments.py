"""An nbgrader course generated from the chapters (`make assignments`).

    python tools/assignments.py [--out _build/course] [chapters/0X_name.md ...]

writes a ready nbgrader course directory: ``nbgrader_config.py`` and
``source/<chapter>/<chapter>.ipynb`` for every numbered chapter. The book's
sources stay the one place where an exercise is written; each assignment is
built from them:

* the chapter's title, its "In this chapter" box, a link to the chapter online,
  and how the assignment is graded;
* the chapter's set-up cells (imports, parameters with ``quick = True``, the
  Colab install, set-up, sizes) and, when an exercise uses a result of the
  chapter (a logged norm, a trained model), the chapter cells that compute it
  (found by following the names the exercise code uses), all read-only;
* every exercise, numbered as in the book, with its statement. A coding
  exercise becomes an autograded answer cell (the book's solution between
  ``### BEGIN SOLUTION`` / ``### END SOLUTION``, the stub's signature and hints
  outside) followed by two autograded test cells that call the exercise's own
  ``gradlab.checks`` function: the visible cases, and the strongest cases
  hidden (``### BEGIN HIDDEN TESTS``). A written exercise becomes a manually
  graded answer cell whose content in ``source/`` is the book's solution, the
  instructor's reference.

nbgrader's own commands take over from there (``nbgrader generate_assignment``,
``autograde``, ``generate_feedback``); see the instructors' page.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tools.reader import Context, convert_markdown, page_url  # noqa: E402

COURSE_ID = "taming-exploding-gradients"
POINTS_VISIBLE = 2  # per coding exercise: the visible cases
POINTS_HIDDEN = 2  # and the hidden, strongest cases
POINTS_WRITTEN = 3  # per written exercise, graded by hand
EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}[ \t]*(?P<title>[^\n]*)\n(?P<opts>(?::[\w-]+:[^\n]*\n)*)"
                      r"(?P<body>.*?)^\1[ \t]*$", re.S | re.M)
_GATE_START = re.compile(r"^`{3,}\{solution-start\}[^\n]*\n(?::[\w-]+:[^\n]*\n)*`{3,}[ \t]*$", re.M)
_GATE_END = re.compile(r"^`{3,}\{solution-end\}[^\n]*\n`{3,}[ \t]*$", re.M)
_SOLUTION = re.compile(r"^(`{3,})\{solution\}[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)


# --------------------------------------------------------------------------- the exercises of a chapter

@dataclass
class Exercise:
    label: str
    number: int
    title: str
    statement: str  # MyST markdown of the exercise's body
    stub: str | None = None  # the code cell right after the statement (coding exercises)
    solution_code: list[str] = field(default_factory=list)
    solution_text: str = ""  # MyST markdown of the solution's prose

    @property
    def coding(self) -> bool:
        return self.stub is not None


@dataclass
class Chapter:
    source: Path
    title: str
    intro: str  # the "In this chapter" box (MyST)
    setup: list  # code cells before the first section
    cells: list  # every cell of the source
    exercises_at: int  # index of the first cell of the exercises section
    exercises: list[Exercise]


def parse_chapter(source: Path) -> Chapter:
    nb = jupytext.read(source)
    cells = nb.cells
    title = re.search(r"^# (.+)$", source.read_text(), re.M).group(1).strip()
    intro = ""
    match = re.search(r"^(:{3,}|`{3,})\{admonition\} In this chapter\n(?::[\w-]+:[^\n]*\n)*(.*?)^\1[ \t]*$",
                      source.read_text(), re.S | re.M)
    if match:
        intro = match.group(2).strip()
    first_section = next(i for i, c in enumerate(cells) if c.cell_type == "markdown"
                         and re.search(r"^## ", c.source, re.M))
    setup = [c for c in cells[:first_section] if c.cell_type == "code"]
    at = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
               and re.search(r"^## Exercises", c.source, re.M)), None)
    if at is None:
        raise ValueError(f"{source.name} has no '## Exercises' section")
    exercises: list[Exercise] = []
    current: Exercise | None = None
    in_solution = False
    number = 0
    for cell in cells[at:]:
        if cell.cell_type == "code":
            if in_solution and current is not None:
                current.solution_code.append(cell.source)
            elif current is not None and current.stub is None and not current.solution_code \
                    and ("YOUR CODE HERE" in cell.source or "checks.check_" in cell.source):
                current.stub = cell.source
            continue
        # a markdown cell: exercises, solutions and the prose of gated solutions, in order
        pos = 0
        text = cell.source
        tokens = sorted(
            [(m.start(), "exercise", m) for m in EXERCISE.finditer(text)]
            + [(m.start(), "start", m) for m in _GATE_START.finditer(text)]
            + [(m.start(), "end", m) for m in _GATE_END.finditer(text)]
            + [(m.start(), "solution", m) for m in _SOLUTION.finditer(text)],
            key=lambda t: t[0])
        for start, kind, m in tokens:
            between = text[pos:start]
            if in_solution and current is not None and between.strip():
                current.solution_text += between.strip() + "\n\n"
            pos = m.end()
            if kind == "exercise":
                number += 1
                label = re.search(r"^:label:\s*(\S+)", m.group("opts"), re.M)
                current = Exercise(label.group(1) if label else f"exercise-{number}", number,
                                   m.group("title").strip(), m.group("body").strip())
                exercises.append(current)
            elif kind == "start":
                in_solution = True
            elif kind == "end":
                in_solution = False
            elif kind == "solution" and current is not None:
                body = re.sub(r"^:[\w-]+:[^\n]*\n", "", m.group(2), flags=re.M)
                current.solution_text += body.strip() + "\n\n"
        rest = text[pos:]
        if in_solution and current is not None and rest.strip():
            current.solution_text += rest.strip() + "\n\n"
    for ex in exercises:
        ex.solution_text = ex.solution_text.strip()
    return Chapter(source, title, intro, setup, cells, at, exercises)


# --------------------------------------------------------------------------- code: answers and tests

def _defined_and_used(code: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(code)
    defined, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, (ast.Store, ast.Del)) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return defined, used


def chapter_cells_needed(chapter: Chapter) -> list:
    """The chapter's code cells (between the set-up and the exercises) that the exercises'
    code needs, with what those cells need in turn, in the chapter's order."""
    body = [c for c in chapter.cells[:chapter.exercises_at] if c.cell_type == "code" and c not in chapter.setup]
    available = set(dir(builtins))
    for c in chapter.setup:
        available |= _defined_and_used(c.source)[0]
    wanted: set[str] = set()
    for ex in chapter.exercises:
        for code in ([ex.stub] if ex.stub else []) + ex.solution_code:
            defined, used = _defined_and_used(code)
            wanted |= used - defined
    wanted -= available
    chosen: list = []
    while wanted:
        name = wanted.pop()
        providers = [c for c in body if name in _defined_and_used(c.source)[0]]
        if not providers:
            continue  # defined inside the exercises themselves (an earlier exercise)
        cell = providers[-1]
        if cell in chosen:
            continue
        chosen.append(cell)
        defined, used = _defined_and_used(cell.source)
        wanted |= (used - defined - available) - {n for c in chosen for n in _defined_and_used(c.source)[0]}
    return [c for c in body if c in chosen]


def _check_calls(code: str) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks" \
                and node.func.attr.startswith("check_"):
            calls.append(node)
    return calls


def _uses_checks(stmt: ast.stmt) -> bool:
    return any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "checks"
               for n in ast.walk(stmt))


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def answer_cell(ex: Exercise) -> str:
    """The autograded answer cell: the stub's definitions, each with the book's solution
    between nbgrader's solution markers (the release keeps the signature and the hints)."""
    stub_lines = ex.stub.splitlines()
    stub_tree = ast.parse(ex.stub)
    solution = "\n\n".join(ex.solution_code)
    sol_tree = ast.parse(solution)
    sol_lines = solution.splitlines()
    pieces = []
    for stmt in stub_tree.body:
        if _uses_checks(stmt):
            continue
        if isinstance(stmt, ast.FunctionDef):
            ref = next((s for s in sol_tree.body if isinstance(s, ast.FunctionDef) and s.name == stmt.name), None)
            if ref is None:
                raise ValueError(f"exercise {ex.label}: the solution defines no {stmt.name}()")
            header = stub_lines[stmt.lineno - 1:stmt.body[0].lineno - 1]
            # the stub's docstring and hint comments stay visible; YOUR CODE HERE becomes a hint
            hints = [ln for ln in stub_lines[stmt.body[0].lineno - 1:stmt.end_lineno]
                     if ln.strip().startswith("#")]
            hints = [re.sub(r"#\s*YOUR CODE HERE:?\s*", "# Hint: ", ln) for ln in hints
                     if ln.strip() not in ("# YOUR CODE HERE", "#")]
            hints = [ln for ln in hints if ln.strip() != "# Hint:"]
            first = stmt.body[0]
            doc = []
            if _is_docstring(first):
                doc = stub_lines[first.lineno - 1:first.end_lineno]
            ref_body = ref.body
            if ref_body and _is_docstring(ref_body[0]):
                ref_body = ref_body[1:]
            body = sol_lines[ref_body[0].lineno - 1:ref.end_lineno]
            indent = re.match(r"\s*", body[0]).group(0)
            pieces.append("\n".join(header + doc + hints + [f"{indent}### BEGIN SOLUTION", *body,
                                                            f"{indent}### END SOLUTION"]))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = {t.id for t in ast.walk(stmt) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
            ref = next((s for s in sol_tree.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                        and {t.id for t in ast.walk(s) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
                        == targets), None)
            if ref is None:
                raise ValueError(f"exercise {ex.label}: the solution assigns no {sorted(targets)}")
            comment = re.search(r"#\s*(edit me:?\s*)?(.*)$", stub_lines[stmt.end_lineno - 1])
            hint = [f"# Hint: {comment.group(2)}"] if comment and comment.group(2) else []
            pieces.append("\n".join(hint + ["### BEGIN SOLUTION", *sol_lines[ref.lineno - 1:ref.end_lineno],
                                            "### END SOLUTION"]))
        else:
            raise ValueError(f"exercise {ex.label}: teach tools/assignments.py about a stub statement "
                             f"like {ast.unparse(stmt)[:60]!r}")
    return "\n\n\n".join(pieces)


def test_cells(ex: Exercise) -> tuple[str, str]:
    """(visible test, hidden test): the stub's own checks on their visible and their hidden
    cases. Each cell prints the checker's message (the feedback) and ends with its points:
    the cell's points times the fraction of cases that pass, nbgrader's partial credit (so
    a mistake the checker finds on one named case only loses that case's share)."""
    calls = _check_calls(ex.stub)
    if not calls:
        raise ValueError(f"exercise {ex.label} has a stub but no gradlab.checks call")

    def cell(selection: str, points: int) -> list[str]:
        lines, scores = [], []
        for k, call in enumerate(calls):
            call = copy.deepcopy(call)
            call.keywords = [kw for kw in call.keywords if kw.arg != "cases"] + [
                ast.keyword("cases", ast.Constant(selection))]
            name = f"result{k + 1}" if len(calls) > 1 else "result"
            lines += [f"{name} = {ast.unparse(call)}", f"print({name})"]
            scores.append(f"{name}.score")
        mean = scores[0] if len(scores) == 1 else f"({' + '.join(scores)}) / {len(scores)}"
        return lines + [f"round({points} * {mean}, 2)  # points: {points} x the fraction of cases that pass"]

    visible = "\n".join([f"# Autograded, {POINTS_VISIBLE} points: the cases you can check yourself (the message "
                         "says what is wrong)."] + cell("visible", POINTS_VISIBLE))
    hidden = "\n".join([f"# Autograded, {POINTS_HIDDEN} points: more cases, checked when your work is graded.",
                        "### BEGIN HIDDEN TESTS", *cell("hidden", POINTS_HIDDEN), "### END HIDDEN TESTS"])
    return visible, hidden


# --------------------------------------------------------------------------- the assignment notebook

def _nbgrader(cell, grade_id: str, *, grade: bool, solution: bool, locked: bool, points: int = 0):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def _md(text: str, doc: str) -> str:
    return "\n\n".join(convert_markdown(text, Context(doc, student=True)))


def _quick(setup_source: str) -> str:
    """The parameters cell with quick mode on: assignments run (and are autograded) small."""
    out, n = re.subn(r"^quick = False", "quick = True", setup_source, flags=re.M)
    if not n:
        raise ValueError("the parameters cell has no `quick = False` line")
    return out


def assignment(source: Path) -> tuple[nbformat.NotebookNode, dict]:
    """The assignment notebook of one chapter, and its points per exercise."""
    ch = parse_chapter(source)
    doc = source.stem
    cells = []
    lock = 0

    def locked_md(text: str):
        nonlocal lock
        lock += 1
        cells.append(_nbgrader(nbformat.v4.new_markdown_cell(text), f"{doc}-text-{lock}",
                               grade=False, solution=False, locked=True))

    def locked_code(code: str, **meta):
        nonlocal lock
        lock += 1
        cells.append(_nbgrader(nbformat.v4.new_code_cell(code, metadata=meta), f"{doc}-setup-{lock}",
                               grade=False, solution=False, locked=True))

    points = {}
    for ex in ch.exercises:
        points[ex.label] = POINTS_VISIBLE + POINTS_HIDDEN if ex.coding else POINTS_WRITTEN
    total = sum(points.values())
    coding = sum(ex.coding for ex in ch.exercises)
    locked_md(f"# Assignment: {ch.title}\n\n"
              f"The exercises of the chapter [{ch.title}]({page_url(doc)}), to hand in. Read the chapter "
              f"first. {len(ch.exercises)} exercises, {total} points: {coding} coding exercises are graded "
              f"automatically ({POINTS_VISIBLE} points for the cases you can check here, {POINTS_HIDDEN} for "
              f"more cases checked at grading), the written ones ({POINTS_WRITTEN} points each) by your "
              "instructor.\n\n"
              "Write your code where it says `YOUR CODE HERE` (delete the `raise NotImplementedError()`), "
              "and your written answers where it says `YOUR ANSWER HERE`. Run every cell from the top "
              "(*Kernel > Restart Kernel and Run All Cells*) before you hand in: that is what the grader does.")
    if ch.intro:
        locked_md(_md(f":::{{admonition}} In this chapter\n{ch.intro}\n:::", doc))
    locked_md("## Set-up\n\nThe chapter's imports and parameters (quick mode: the assignment runs in "
              "about a minute on a laptop's CPU). Do not edit these cells.")
    for cell in ch.setup:
        src = _quick(cell.source) if "parameters" in cell.metadata.get("tags", []) else cell.source
        tags = [t for t in cell.metadata.get("tags", []) if t == "parameters"]
        locked_code(src, **({"tags": tags} if tags else {}))
    needed = chapter_cells_needed(ch)
    if needed:
        locked_md("The exercises below use results of the chapter; these cells compute them "
                  "(read-only, copied from the chapter).")
        for cell in needed:
            locked_code(cell.source)
    locked_md("## Exercises")
    for ex in ch.exercises:
        title = f": {ex.title}" if ex.title else ""
        locked_md(f"### Exercise {ex.number}{title}\n\n{_md(ex.statement, doc)}\n\n"
                  f"*{points[ex.label]} points.*")
        if ex.coding:
            answer = nbformat.v4.new_code_cell(answer_cell(ex))
            cells.append(_nbgrader(answer, f"{ex.label}-answer", grade=False, solution=True, locked=False))
            visible, hidden = test_cells(ex)
            cells.append(_nbgrader(nbformat.v4.new_code_cell(visible), f"{ex.label}-visible",
                                   grade=True, solution=False, locked=True, points=POINTS_VISIBLE))
            cells.append(_nbgrader(nbformat.v4.new_code_cell(hidden), f"{ex.label}-hidden",
                                   grade=True, solution=False, locked=True, points=POINTS_HIDDEN))
        else:
            reference = _md(ex.solution_text, doc) if ex.solution_text else "(no reference solution in the book)"
            cells.append(_nbgrader(nbformat.v4.new_markdown_cell(reference), f"{ex.label}-written",
                                   grade=True, solution=True, locked=False, points=POINTS_WRITTEN))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb, points


CONFIG = '''"""nbgrader configuration of the course generated from the book (tools/assignments.py)."""
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "{course}"
c.CourseDirectory.db_assignments = [{assignments}]
# Each assignment runs the chapter's set-up at quick size; generous per-cell limits for slow machines.
c.ExecutePreprocessor.timeout = 600
c.Execute.timeout = 600
# The book's checks raise AssertionError with the student-facing hint; keep the kernel's output.
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
'''


# --------------------------------------------------------------------------- the instructors' page

ALLOWANCE_MIN = {"coding": 20, "written": 15, "reading": 10}  # a student's minutes per item
INSTRUCTORS = ROOT / "chapters" / "a3_instructors.md"
BEGIN, END = "<!-- BEGIN GENERATED: tools/assignments.py -->", "<!-- END GENERATED: tools/assignments.py -->"


def _checker(ex: Exercise) -> str:
    calls = _check_calls(ex.stub) if ex.stub else []
    return ", ".join(f"`{c.func.attr}`" for c in calls) or "by hand"


def instructors_tables() -> str:
    """The generated part of the instructors' page: points and time per assignment, and
    every exercise with its kind, points and checker. Times come from the stored
    measurement of the chapters (gradlab.benchmarks.load("chapters"))."""
    from gradlab import benchmarks

    record = benchmarks.load("chapters").get("cpu") if "chapters" in benchmarks.available() else None
    quick = {c["chapter"]: c["quick_s"] for c in record["cases"]} if record else {}
    rows = ["| assignment | exercises: coding / written | points: autograded + by hand | quick run of the "
            "set-up (measured) | student time (estimate) |", "|---|---|---|---|---|"]
    # three columns: the long names (chapter, label, checker) share the wide first one, so
    # that the PDF's table fits the page
    detail = ["| exercise (assignment, number, title, label; checker) | kind | points |", "|---|---|---|"]
    for src in numbered_chapters():
        ch = parse_chapter(src)
        coding = [ex for ex in ch.exercises if ex.coding]
        written = [ex for ex in ch.exercises if not ex.coding]
        auto = len(coding) * (POINTS_VISIBLE + POINTS_HIDDEN)
        manual = len(written) * POINTS_WRITTEN
        minutes = (ALLOWANCE_MIN["reading"] + ALLOWANCE_MIN["coding"] * len(coding)
                   + ALLOWANCE_MIN["written"] * len(written))
        run = f"{quick[src.stem]:.0f} s" if src.stem in quick else "not measured"
        rows.append(f"| `{src.stem}`: {ch.title} | {len(coding)} / {len(written)} | {auto} + {manual} = "
                    f"{auto + manual} | {run} | about {5 * round(minutes / 5)} min |")
        for ex in ch.exercises:
            kind = "coding (autograded)" if ex.coding else "written (by hand)"
            pts = POINTS_VISIBLE + POINTS_HIDDEN if ex.coding else POINTS_WRITTEN
            checker = f"; {_checker(ex)}" if ex.coding else ""
            detail.append(f"| `{src.stem}` {ex.number}. {ex.title} (`{ex.label}`{checker}) | {kind} | {pts} |")
    note = (f"Student time: {ALLOWANCE_MIN['reading']} minutes to set up and read the assignment, "
            f"{ALLOWANCE_MIN['coding']} per coding exercise and {ALLOWANCE_MIN['written']} per written one "
            "(our allowance, not a measurement), on top of the measured run time of a chapter in quick mode "
            "on a 2-core CPU, which is what the assignment runs. Autograded points: "
            f"{POINTS_VISIBLE} for the visible cases of the exercise's check and {POINTS_HIDDEN} for its hidden "
            f"cases, each shared among its cases; a written answer is worth {POINTS_WRITTEN}.")
    return "\n".join([BEGIN, "", *rows, "", note, "", *detail, "", END])


def update_instructors_page() -> bool:
    """Rewrite the generated tables of the instructors' page; True when they changed."""
    text = INSTRUCTORS.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + instructors_tables() + text[end:]
    if new == text:
        return False
    INSTRUCTORS.write_text(new)
    return True


def numbered_chapters() -> list[Path]:
    return sorted(p for p in (ROOT / "chapters").glob("[0-9][0-9]_*.md"))


def write_course(out: Path, sources: list[Path] | None = None) -> dict[str, dict]:
    """Write the course to ``out``; returns {assignment: {exercise label: points}}."""
    sources = sources or numbered_chapters()
    summary = {}
    for src in sources:
        nb, points = assignment(src)
        folder = out / "source" / src.stem
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"{src.stem}.ipynb")
        summary[src.stem] = points
    names = ", ".join(f'{{"name": "{name}"}}' for name in summary)
    (out / "nbgrader_config.py").write_text(CONFIG.format(course=COURSE_ID, assignments=names))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", type=Path, help="chapter sources (default: every numbered chapter)")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "course")
    ap.add_argument("--instructors", action="store_true",
                    help="instead: rewrite the generated tables of chapters/a3_instructors.md")
    args = ap.parse_args(argv)
    if args.instructors:
        changed = update_instructors_page()
        print(f"{INSTRUCTORS.relative_to(ROOT)}: {'tables rewritten' if changed else 'up to date'}")
        return 0
    summary = write_course(args.out, [p.resolve() for p in args.sources] or None)
    for name, points in summary.items():
        print(f"{name}: {len(points)} exercises, {sum(points.values())} points")
    print(f"course written to {args.out} (nbgrader_config.py, source/); next: cd {args.out} && "
          "nbgrader generate_assignment <chapter>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
