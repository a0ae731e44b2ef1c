"""Every benchmark script runs in --quick mode, so that none can break unnoticed.

Reporting only: a benchmark's times are never judged here (or anywhere in the
tests). Each script writes its JSON into a temporary folder (``--results``), never
into the stored results (``lib/gradlab/benchmark_results/``), whose files this test also checks are left
alone. The case study's benchmark trains a tiny model here (its own size options).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
STORED = ROOT / "lib" / "gradlab" / "benchmark_results"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))
# smaller than --quick where --quick alone takes long (seconds here, not half a minute)
SMALLER = {"bench_case_study": ["--seeds", "1", "--steps", "3", "--hidden", "16"]}


def _stored() -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(STORED)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in STORED.rglob("*") if p.is_file()}


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 6, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_runs_in_quick_mode(script, tmp_path):
    before = _stored()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu", "--threads", "1",
                          "--results", str(tmp_path), *SMALLER.get(script.stem, [])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    written = list(tmp_path.rglob("*.json"))
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [f"cpu/{script.stem[len('bench_'):]}-quick.json"]
    record = json.loads(written[0].read_text())
    assert record["benchmark"] == f"{script.stem[len('bench_'):]}-quick" and record["quick"] is True
    assert record["device_type"] == "cpu" and record["cases"]
    assert _stored() == before, "a --quick run touched the stored results"
