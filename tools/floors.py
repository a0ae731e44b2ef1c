"""Print the pip requirements of the floor environment (`make floor`).

Every dependency of gradlab at the lowest version pyproject.toml declares
(``numpy>=1.24`` -> ``numpy==1.24.*``), except torch, which stays at the pinned
version of .ci/constraints.txt: any other torch release is a multi-GB download
(on Linux, PyPI's torch is the CUDA build), and torch's floor is set by the APIs
the code uses (see pyproject.toml), not tested.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def floors() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / ".ci" / "constraints.txt").read_text(), re.M))
    out = []
    for dep in deps:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([\d.]+)", dep.strip()).groups()
        out.append(f"{name}=={pinned[name]}" if name == "torch" else f"{name}=={floor}.*")
    return out


if __name__ == "__main__":
    print(" ".join(floors()))
    sys.exit(0)
