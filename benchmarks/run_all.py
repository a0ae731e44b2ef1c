"""Run every benchmarks/bench_*.py (`make bench`). Pass --device cuda to force the GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
scripts = sorted(here.glob("bench_*.py"))
failed = []
for script in scripts:
    print(f"== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode != 0:
        failed.append(script.name)
print(f"{len(scripts) - len(failed)} benchmarks ran, {len(failed)} failed {failed or ''}")
sys.exit(1 if failed else 0)
