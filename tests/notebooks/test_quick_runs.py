"""Every chapter runs through papermill in quick mode on the CPU, within its time budget.

The budget is 30 s (a chapter may declare another in its metadata as
``gradlab: {quick_budget_s: N}``); the test fails at twice the budget. Wall
times are written to _build/quick_times.json.
"""

from __future__ import annotations

import json
import time

import jupytext
import pytest

from tests.notebooks.conftest import BUILD, CHAPTERS, chapter_sources

SOURCES = chapter_sources()
DEFAULT_BUDGET_S = 30.0


@pytest.mark.notebook
@pytest.mark.parametrize("md", SOURCES, ids=[p.stem for p in SOURCES])
def test_quick_run(md, scratch_home, monkeypatch):
    import papermill

    for key, value in scratch_home.items():
        monkeypatch.setenv(key, value)
    budget = float(jupytext.read(md).metadata.get("gradlab", {}).get("quick_budget_s", DEFAULT_BUDGET_S))
    out = BUILD / "quick" / f"{md.stem}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nb = papermill.execute_notebook(
        str(md.with_suffix(".ipynb")), str(out), parameters={"quick": True, "device": "cpu"},
        kernel_name="python3", cwd=str(CHAPTERS), progress_bar=False, log_output=False,
    )
    elapsed = time.perf_counter() - t0
    record = BUILD / "quick_times.json"
    times = json.loads(record.read_text()) if record.exists() else {}
    times[md.stem] = {"seconds": round(elapsed, 1), "budget_s": budget}
    record.write_text(json.dumps(times, indent=2) + "\n")
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert not (o.output_type == "stream" and o.name == "stderr"), f"stderr in quick mode: {o.text[:300]}"
    assert elapsed <= 2 * budget, f"{md.stem} took {elapsed:.1f} s in quick mode; budget {budget:.0f} s (x2 slack)"
