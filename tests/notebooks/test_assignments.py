"""`make assignments`: the nbgrader course round trip, for every assignment.

The course is generated from the chapters (tools/assignments.py); nbgrader's own
commands release it, autograde three submissions per assignment and write the
feedback; the scores are read back from nbgrader's gradebook:

* ``book``: the book's own solutions: full marks on every autograded cell;
* ``blank``: the untouched release: zero on every autograded cell, and no crash;
* ``mistake``: the book's solutions with one typical mistake that the exercise's
  checker knows: partial marks, and the checker's hint in the feedback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools.assignments import numbered_chapters, write_course

CHAPTERS = [p.stem for p in numbered_chapters()]

# One typical mistake per assignment: (function or name the answer cell defines, wrong code,
# words the checker's hint must contain).
MISTAKES = {
    "01_exploding": ("my_global_grad_norm", '''
def my_global_grad_norm(parameters):
    return sum(p.grad.norm().item() for p in parameters if p.grad is not None)
''', "added the per-tensor norms"),
    "02_clipping": ("my_clip_grad_norm_", '''
def my_clip_grad_norm_(parameters, max_norm):
    total = sum(p.grad.double().norm() ** 2 for p in parameters if p.grad is not None) ** 0.5
    scale = min(1.0, max_norm / (float(total) + 1e-6))
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(scale)
    return total
''', "twice"),
    # normalising only at the end: right on ordinary matrices (the visible cases), overflows on
    # entries of size 1000 (a hidden case)
    "03_spectral": ("my_top_singular", '''
def my_top_singular(W, v, num_iters):
    for _ in range(num_iters):
        u = W @ v
        v = W.T @ u
    v = v / v.norm()
    u = W @ v
    sigma = u.norm()
    return sigma, u / sigma, v
''', "overflow"),
    # computed and returned in float64 "for accuracy": right on float64 inputs (the visible
    # cases), the wrong dtype for float32 parameters (a hidden case)
    "04_optimizers": ("my_adam_step", '''
def my_adam_step(p, g, m, v, t, lr, beta1, beta2, eps):
    p, g, m, v = p.double(), g.double(), m.double(), v.double()
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v
''', "keep the dtype"),
    # element by element with Python's max: right on vectors (the visible cases), fails on
    # matrices (two hidden cases)
    "05_sparse": ("my_soft_threshold", '''
def my_soft_threshold(x, tau):
    return torch.stack([torch.sign(v) * max(abs(v) - tau, 0) for v in x])
''', "more than one value is ambiguous"),
    "06_compress": ("my_power_step", '''
def my_power_step(M, Q):
    P = torch.linalg.qr(M @ Q).Q
    return P, 2 * M.T @ P
''', "nothing to average"),
    "07_case_study": ("my_warmup", '''
def my_warmup(step, warmup_steps):
    return min(1.0, step / warmup_steps)
''', "warm"),
}


def _nbgrader(course: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent  # nbgrader runs `alembic` from the PATH
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([str(bin_dir / "nbgrader"), *args], cwd=course, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def _fill(release: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release with every answer cell filled in with the book's solution (markers removed)."""
    ref = {c.metadata["nbgrader"]["grade_id"]: c for c in source.cells if "nbgrader" in c.metadata}
    out = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in out.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            text = ref[meta["grade_id"]].source
            cell.source = "\n".join(ln for ln in text.splitlines()
                                    if ln.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return out


def _with_mistake(filled: nbformat.NotebookNode, name: str, code: str) -> tuple[nbformat.NotebookNode, str]:
    for cell in filled.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code" and re.search(rf"^(def {name}\(|{name} =)",
                                                                         cell.source, re.M):
            cell.source = code.strip()
            return filled, meta["grade_id"]
    raise AssertionError(f"no answer cell defines {name}: update MISTAKES for the new exercises")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    summary = write_course(root)
    assert list(summary) == CHAPTERS and all(summary.values())
    return root


@pytest.mark.notebook
@pytest.mark.parametrize("name", CHAPTERS)
def test_round_trip(course, name, scratch_home):
    os.environ.update({k: v for k, v in scratch_home.items() if k != "HOME"})
    _nbgrader(course, "generate_assignment", name, "--force")
    source = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
    release = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    # the release holds neither the solutions nor the hidden tests
    text = json.dumps(release)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            body = re.search(r"### BEGIN SOLUTION\n(.*?)\n\s*### END SOLUTION", cell.source, re.S).group(1)
            assert body.strip() not in text
        if meta.get("solution") and cell.cell_type == "markdown":
            assert cell.source.strip()[:80] not in text
    # three submissions
    fn, code, hint = MISTAKES[name]
    filled = _fill(release, source)
    mistake, wrong_cell = _with_mistake(_fill(release, source), fn, code)
    for student, nb in (("book", filled), ("blank", release), ("mistake", mistake)):
        folder = course / "submitted" / student / name
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"{name}.ipynb")
    _nbgrader(course, "autograde", name, "--force")
    _nbgrader(course, "generate_feedback", name, "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {}
        for student in ("book", "blank", "mistake"):
            sub = gb.find_submission_notebook(name, name, student)
            scores[student] = {g.name: (g.score, g.max_score) for g in sub.grades if g.cell_type == "code"}
    auto_max = sum(m for _, m in scores["book"].values())
    # kept for the record (the instructors' page quotes what the round trip measured)
    record = Path(__file__).resolve().parents[2] / "_build" / "assignment_scores"
    record.mkdir(parents=True, exist_ok=True)
    (record / f"{name}.json").write_text(json.dumps(
        {student: {cell: list(sm) for cell, sm in cells.items()} for student, cells in scores.items()},
        indent=1, sort_keys=True) + "\n")
    assert auto_max > 0
    assert all(s == m for s, m in scores["book"].values()), scores["book"]
    assert all(s == 0 for s, _ in scores["blank"].values()), scores["blank"]
    lost = {cell for cell, (s, m) in scores["mistake"].items() if s < m}
    got = sum(s for s, _ in scores["mistake"].values())
    assert 0 < got < auto_max, scores["mistake"]
    assert lost and all(c.startswith(wrong_cell.removesuffix("-answer")) for c in lost), (lost, wrong_cell)
    feedback = (course / "feedback" / "mistake" / name / f"{name}.html").read_text()
    assert hint in feedback, f"the checker's hint ({hint!r}) is not in the feedback"


def test_instructors_tables_are_up_to_date():
    """The instructors' page shows the generated points and times of the current chapters."""
    from tools.assignments import BEGIN, END, INSTRUCTORS, instructors_tables

    text = INSTRUCTORS.read_text()
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == instructors_tables(), (
        "chapters/a3_instructors.md's tables are stale: run `python tools/assignments.py --instructors` "
        "(or `python tools/nbtools.py times` after `make test`)")


def test_every_exercise_becomes_an_assignment_cell():
    """Without nbgrader: each chapter's exercises are all in its assignment, coding ones with an
    answer cell holding the book's solution and two test cells, written ones graded by hand."""
    from tools.assignments import assignment, parse_chapter

    for src in numbered_chapters():
        nb, points = assignment(src)
        ch = parse_chapter(src)
        assert [ex.label for ex in ch.exercises] == list(points) and len(points) >= 3
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells]
        assert len(ids) == len(set(ids)), "grade ids must be unique"
        for ex in ch.exercises:
            if ex.coding:
                answer = next(c for c in nb.cells if c.metadata["nbgrader"]["grade_id"] == f"{ex.label}-answer")
                assert "### BEGIN SOLUTION" in answer.source and "### END SOLUTION" in answer.source
                assert {f"{ex.label}-visible", f"{ex.label}-hidden"} <= set(ids)
            else:
                written = next(c for c in nb.cells if c.metadata["nbgrader"]["grade_id"] == f"{ex.label}-written")
                assert written.cell_type == "markdown" and written.metadata["nbgrader"]["points"] > 0
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert "quick = True" in params.source
