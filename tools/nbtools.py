"""Chapter tooling shared by the Makefile and the notebook tests.

    python tools/nbtools.py execute chapters/01_exploding.md [...]
        execute each chapter's MyST source at its default size and write the
        paired .ipynb with outputs (what Colab opens and the regression compares);
    python tools/nbtools.py times
        after `make test`: store the measured run times (the book build's default-
        size execution, _build/default_times.json, and the quick runs,
        _build/quick_times.json) in gradlab/benchmark_results/cpu/chapters.json and
        write each chapter's "Time to run" line from them;
    python tools/nbtools.py compare EXECUTED.ipynb STORED.ipynb
        compare the outputs of two executions with nbval's rules;
    python tools/nbtools.py student
        write the student notebooks to _build/student/ (tools/reader.py: no
        solutions, an answer cell after every written exercise; not the
        instructors' page);
    python tools/nbtools.py reader [chapters/X.md ...]
        rewrite the reader notebooks chapters/X.ipynb from their sources,
        keeping the stored outputs (after a change to prose only).

Comparison rules follow nbval: a code cell tagged ``nbval-ignore-output`` is
not compared, ``nbval-skip`` neither; text outputs (streams, ``text/plain``,
errors) are compared after the substitutions in ``sanitize.cfg``; images and
HTML are not compared.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python tools/nbtools.py): make `tools` importable
    sys.path.insert(0, str(ROOT))
CHAPTERS = ROOT / "chapters"
SANITIZE = Path(__file__).with_name("sanitize.cfg")
IGNORE_TAGS = {"nbval-ignore-output", "nbval-skip"}


def chapter_sources() -> list[Path]:
    """Every chapter notebook source: chapters/*.md with a jupytext header."""
    return sorted(p for p in CHAPTERS.glob("*.md") if p.read_text().startswith("---\njupytext:"))


TIME_LINE = re.compile(r"^\*\*Time to run\*\*[^\n]*$", re.M)


def _about(seconds: float) -> str:
    if seconds < 10:
        return "under 10 s"
    step = 5 if seconds < 100 else 10
    return f"about {int(round(seconds / step) * step)} s"


def time_line(record: dict, stem: str) -> str:
    """The "Time to run" line of a chapter, from the stored measurement ``record``
    (gradlab.benchmarks.load("chapters")["cpu"])."""
    case = next((c for c in record["cases"] if c["chapter"] == stem), None)
    if case is None:
        raise KeyError(f"no measured run time for {stem}: run `make test`, then `python tools/nbtools.py times`")
    return (f"**Time to run** (measured on a 2-core CPU, {record['device']}, with one thread): "
            f"{_about(case['default_s'])} at the default size shown here, "
            f"{_about(case['quick_s'])} with `quick=True` (run alone, kernel start included).")


def store_times(build: Path) -> Path:
    """Write the measured times of the last `make test` to the stored results and every
    chapter's "Time to run" line; returns the results file."""
    import json
    import platform

    import torch

    quick = json.loads((build / "quick_times.json").read_text())
    default = json.loads((build / "default_times.json").read_text())
    cases = []
    for src in chapter_sources():
        key = f"chapters/{src.stem}"
        if src.stem not in quick or key not in default:
            raise KeyError(f"{src.stem} has no measured time in {build}: run the whole `make test` first")
        cases.append({"chapter": src.stem, "default_s": default[key], "quick_s": quick[src.stem]["seconds"]})
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "CPU")
    record = {"benchmark": "chapters", "device": cpu, "device_type": "cpu", "torch": torch.__version__,
              "threads": 1, "date": time.strftime("%Y-%m-%d"),
              "note": "wall time of each chapter: default size in the book build, quick mode run alone",
              "cases": cases}
    out = ROOT / "lib" / "gradlab" / "benchmark_results" / "cpu" / "chapters.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    before = {src: src.read_text() for src in chapter_sources()}
    from tools.assignments import update_instructors_page

    update_instructors_page()  # its tables quote the quick times
    for src in chapter_sources():
        text = src.read_text()
        new = TIME_LINE.sub(time_line(record, src.stem), text, count=1)
        if new != text:
            src.write_text(new)
        if new != before[src]:  # prose only: regenerate the reader notebook, keep the outputs
            write_paired(src, nbformat.read(src.with_suffix(".ipynb"), as_version=4))
    return out


def student_sources() -> list[Path]:
    """The chapters a student gets: every chapter and appendix but the instructors' page."""
    return [p for p in chapter_sources() if p.stem != "a3_instructors"]


def execute(source: Path, *, parameters: dict | None = None, timeout: int = 900,
            threads: int | None = None) -> nbformat.NotebookNode:
    """Execute a chapter (MyST .md or .ipynb) in a fresh kernel, cwd = chapters/.

    ``parameters`` are injected after the ``parameters`` cell, as papermill does;
    ``threads`` sets OMP_NUM_THREADS (and MKL_NUM_THREADS) for the kernel, with passive
    waiting for idle threads."""
    import os

    from nbclient import NotebookClient

    nb = jupytext.read(source)
    if parameters:
        src = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(idx + 1, cell)
    env = {}
    if threads is not None:
        # PASSIVE: idle OpenMP threads sleep instead of spinning; on a busy shared machine spinning
        # threads make small-op loops 25-40x slower (results are the same)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(source.parent)}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def robust(sources: list[Path], seeds: list[int], threads: list[int], out: Path,
           quick: bool = False) -> list[str]:
    """Execute every source at its default size (``quick``: in quick mode on the CPU) for
    each seed and thread count.

    Executed notebooks go to ``out`` (also the failing ones, up to the failing
    cell), with a JSON record of times and outcomes; returns the failures as
    messages. Only the chapters' own asserts judge these runs: their outputs are
    not compared with the stored ones."""
    import json

    from nbclient.exceptions import CellExecutionError

    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "robust.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    failures = []
    for src in sources:
        for seed in seeds:
            for n in threads:
                name = f"{src.stem}-{'quick-' if quick else ''}seed{seed}-threads{n}"
                t0 = time.perf_counter()
                error = None
                nb = None
                try:
                    params = {"seed": seed, **({"quick": True, "device": "cpu"} if quick else {})}
                    nb = execute(src.resolve(), parameters=params, threads=n)
                except CellExecutionError as exc:
                    error = str(exc).strip().splitlines()[-1][:500]
                    nb = getattr(exc, "nb", None)
                elapsed = time.perf_counter() - t0
                if nb is not None:
                    nbformat.write(nb, out / f"{name}.ipynb")
                record[name] = {"seconds": round(elapsed, 1), "passed": error is None, "error": error}
                record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                print(f"{name}: {'passed' if error is None else 'FAILED'} in {elapsed:.1f} s"
                      + (f"\n  {error}" if error else ""), flush=True)
                if error:
                    failures.append(f"{name}: {error}")
    return failures


def write_paired(source: Path, executed: nbformat.NotebookNode) -> Path:
    """Write the chapter's reader notebook (``tools.reader``: no MyST markup) with the
    outputs of ``executed`` to ``X.ipynb`` beside the source: what Colab opens."""
    from tools.reader import reader_notebook

    target = source.with_suffix(".ipynb")
    nbformat.write(reader_notebook(source, executed), target)
    return target


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    lines = [ln for ln in SANITIZE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pairs = []
    for line in lines:
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip().startswith("regex"):
            pattern = value
        elif key.strip().startswith("replace"):
            pairs.append((re.compile(pattern), value))
    return pairs


def _stream_texts(outputs, merged_in_place: bool) -> dict[str, str]:
    """One text per stream name, as the book shows it.

    The book merges a cell's stream chunks with myst-nb's ``coalesce_streams``
    (which also applies carriage returns). myst-nb 1.4 does that merge *in
    place* on the first chunk and leaves the later chunks in the executed
    notebook it writes; for such a notebook (``merged_in_place``) the first
    chunk of each stream already is the merged text. Any other notebook's
    chunks are concatenated. (myst-nb joins chunks with newlines, so where the
    kernel happened to split a line, the two forms differ in whitespace only:
    the comparison ignores whitespace, see :func:`_text_outputs`.)
    """
    texts: dict[str, str] = {}
    for o in outputs:
        if o.output_type == "stream":
            if merged_in_place:
                texts.setdefault(o.name, o.text)
            else:
                texts[o.name] = texts.get(o.name, "") + o.text
    return texts


def _text_outputs(cell, sanitizers, merged_in_place: bool = False) -> list[str]:
    out: list[str] = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            continue
        if o.output_type in ("execute_result", "display_data"):
            if "text/plain" in o.get("data", {}) and not any(
                k.startswith("image/") for k in o.get("data", {})
            ):
                out.append(o.data["text/plain"])
        elif o.output_type == "error":
            out.append(f"error: {o.ename}: {o.evalue}")
    for name, text in sorted(_stream_texts(cell.get("outputs", []), merged_in_place).items()):
        # like nbval: a carriage return keeps only what follows it on that line
        text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
        out.insert(0, f"{name}: {text}")
    joined = "\n".join(out)
    for pattern, repl in sanitizers:
        joined = pattern.sub(repl, joined)
    # whitespace carries no meaning here (the kernel splits streams into chunks at
    # arbitrary points, and the book joins chunks with newlines): compare the words
    return [" ".join(joined.split())]


def compare(executed: nbformat.NotebookNode, stored: nbformat.NotebookNode,
            *, executed_by_myst_nb: bool = False) -> list[str]:
    """Differences between two executions of the same chapter, as messages (empty = same).

    ``executed_by_myst_nb``: ``executed`` is a notebook written by the book build
    (streams already merged in place, see :func:`_stream_texts`)."""
    sanitizers = _sanitizers()
    ex_cells = [c for c in executed.cells if c.cell_type == "code"
                and "injected-parameters" not in c.metadata.get("tags", [])]
    st_cells = [c for c in stored.cells if c.cell_type == "code"]
    problems = []
    if [c.source for c in ex_cells] != [c.source for c in st_cells]:
        return ["the code cells differ: the stored .ipynb is not the executed source "
                "(run `make notebooks`)"]
    for i, (ex, st) in enumerate(zip(ex_cells, st_cells)):
        tags = set(st.metadata.get("tags", []))
        if tags & IGNORE_TAGS:
            continue
        a = _text_outputs(ex, sanitizers, merged_in_place=executed_by_myst_nb)
        b = _text_outputs(st, sanitizers)
        if a != b:
            first = ex.source.splitlines()[0] if ex.source else ""
            problems.append(f"code cell {i} ({first[:60]!r}):\n  stored:   {b[0][:400]!r}\n"
                            f"  executed: {a[0][:400]!r}")
    return problems


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tools/nbtools.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("student")
    p_reader = sub.add_parser("reader")
    p_reader.add_argument("sources", nargs="*", type=Path)
    p_exec = sub.add_parser("execute")
    p_exec.add_argument("sources", nargs="*", type=Path)
    p_rob = sub.add_parser("robust")
    p_rob.add_argument("sources", nargs="*", type=Path)
    p_rob.add_argument("--seeds", type=int, nargs="+", default=[1])
    p_rob.add_argument("--threads", type=int, nargs="+", default=[2])
    p_rob.add_argument("--out", type=Path, default=ROOT / "_build" / "robust")
    p_rob.add_argument("--quick", action="store_true", help="quick mode on the CPU instead of the default size")
    sub.add_parser("times")
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("executed", type=Path)
    p_cmp.add_argument("stored", type=Path)
    args = parser.parse_args(argv)

    if args.command == "student":
        from tools.reader import student_notebook

        out = ROOT / "_build" / "student"
        out.mkdir(parents=True, exist_ok=True)
        for src in student_sources():
            nbformat.write(student_notebook(src), out / f"{src.stem}.ipynb")
            print(f"{src.relative_to(ROOT)} -> {(out / src.stem).relative_to(ROOT)}.ipynb")
        return 0
    if args.command == "times":
        print(f"measured times stored in {store_times(ROOT / '_build').relative_to(ROOT)}; chapter headers updated")
        return 0
    if args.command == "reader":
        for src in args.sources or chapter_sources():
            stored = nbformat.read(src.resolve().with_suffix(".ipynb"), as_version=4)
            print(f"{src}: -> {write_paired(src.resolve(), stored).relative_to(ROOT)} (outputs kept)")
        return 0
    if args.command == "execute":
        for src in args.sources or chapter_sources():
            t0 = time.perf_counter()
            nb = execute(src.resolve())
            target = write_paired(src.resolve(), nb)
            print(f"{src}: executed in {time.perf_counter() - t0:.1f} s -> {target.relative_to(ROOT)}")
        return 0
    if args.command == "robust":
        failures = robust(args.sources or chapter_sources(), args.seeds, args.threads, args.out, args.quick)
        if failures:
            print(f"\n{len(failures)} run(s) failed:\n" + "\n".join(failures))
        return 1 if failures else 0
    executed, stored = (nbformat.read(p, as_version=4) for p in (args.executed, args.stored))
    problems = compare(executed, stored, executed_by_myst_nb="jupyter_execute" in str(args.executed))
    print("\n".join(problems) or "same outputs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
