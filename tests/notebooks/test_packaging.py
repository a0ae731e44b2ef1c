"""The ways a reader gets the book's environment agree with the Makefile's pins.

Binder builds from environment.yml; the Pages workflow and the Makefile install
from .ci/constraints.txt. Both must take PyTorch's CPU wheel (on Linux, PyPI's
torch is the CUDA build) and the same constraints as `make setup`."""

from __future__ import annotations

import re

import yaml

from tests.notebooks.conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile defines no {name}"
    return match.group(1)


def test_binder_environment_takes_the_cpu_build_and_the_same_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"], python
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert f"--extra-index-url {CPU_INDEX}" in pip or f"--index-url {CPU_INDEX}" in pip, pip
    constraints = _makefile_var("CONSTRAINTS")
    assert f"-c {constraints}" in pip, f"environment.yml must use the Makefile's constraints ({constraints})"
    assert any(re.fullmatch(r"-e \.\[book\]", line) for line in pip), pip
    pinned = (ROOT / constraints).read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", pinned, re.M), "the constraints must pin torch exactly"


def test_pages_workflow_takes_the_cpu_build():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    env = workflow["jobs"]["build"].get("env", {})
    assert env.get("PIP_EXTRA_INDEX_URL") == CPU_INDEX or env.get("PIP_INDEX_URL") == CPU_INDEX


def test_declared_floors_cover_the_apis_used():
    """torch.nn.utils.get_total_norm (used by the chapters and gradlab.checks) first appeared
    in torch 2.6; the floor must not promise an older torch."""
    deps = {re.split(r"[<>=!~ ]", d)[0]: d for d in
            __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    floor = re.search(r">=\s*(\d+)\.(\d+)", deps["torch"])
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (2, 6), deps["torch"]
    used = "".join(p.read_text() for p in list((ROOT / "lib").rglob("*.py")) + list((ROOT / "chapters").glob("*.md")))
    assert "get_total_norm" in used  # the reason for the floor is still there


def test_jupyterlab_opens_the_chapters_with_myst_rendering():
    """`make lab`: JupyterLab in the project environment, with jupyterlab-myst enabled and
    compatible (a version mismatch only shows in `jupyter labextension list`)."""
    import subprocess
    import sys
    from pathlib import Path

    jupyter = Path(sys.executable).parent / "jupyter"
    out = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True, text=True, timeout=120)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"jupyterlab-myst v[\d.]+ enabled OK", listing), listing
    assert "not compatible" not in listing, listing
    assert re.search(r"^lab: ", (ROOT / "Makefile").read_text(), re.M), "the Makefile has no `lab` target"
