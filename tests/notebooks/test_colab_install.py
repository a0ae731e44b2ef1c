"""The Colab set-up cell of every chapter, run in a fresh virtualenv that already has
its own torch and numpy (as Colab does): it installs gradlab, and touches neither.

The fresh environment gets stand-in `torch` and `numpy` distributions with
versions the book never pins (2.99.0 / 1.99.0), so any attempt to reinstall or
upgrade them shows as a changed version. The cell's GitHub URL is replaced by
this checkout, so the test needs no network beyond PyPI for the build backend.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import venv

import jupytext
import pytest

from tests.notebooks.conftest import ROOT, chapter_sources

SOURCES = chapter_sources()


def _fake_distribution(site, name, version):
    pkg = site / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    (info / "INSTALLER").write_text("pip\n")


def _setup_cell(md):
    code = [c for c in jupytext.read(md).cells if c.cell_type == "code"]
    idx = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    return code[idx + 1].source


@pytest.fixture(scope="module")
def colab_like_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    from pathlib import Path

    _fake_distribution(Path(site), "torch", "2.99.0")
    _fake_distribution(Path(site), "numpy", "1.99.0")
    return python


def _versions(python):
    out = subprocess.run([python, "-c", textwrap.dedent("""
        import json, importlib.metadata as m
        print(json.dumps({d: m.version(d) for d in ("torch", "numpy")}))""")],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.notebook
def test_setup_cell_installs_gradlab_and_keeps_torch_numpy(colab_like_env):
    python = colab_like_env
    cells = {_setup_cell(md) for md in SOURCES}
    assert len(cells) == 1, "every chapter must use the same set-up cell"
    cell = cells.pop()
    # install from a copy, so that setuptools' build/ folder is not written into the checkout
    src = python.parent.parent.parent / "src"
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    local = cell.replace("git+https://github.com/gradlab-book/taming-exploding-gradients", src.as_uri())
    assert local != cell, "the set-up cell no longer installs from the repository URL"
    before = _versions(python)
    run = subprocess.run([python, "-c", local], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _versions(python) == before == {"torch": "2.99.0", "numpy": "1.99.0"}
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('gradlab') is not None)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == "True", "gradlab was not installed"
    # a second run is a no-op: gradlab is there, so no subprocess (pip) is started
    guard = "import subprocess\ndef _no(*a, **k):\n    raise SystemExit('pip was called again')\nsubprocess.run = _no\n"
    again = subprocess.run([python, "-c", guard + local], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-500:]
