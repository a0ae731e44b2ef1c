"""Shared fixtures for the chapter, book and browser tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tools.nbtools import CHAPTERS, ROOT, chapter_sources

BUILD = ROOT / "_build"
HTML = BUILD / "html"


def pytest_configure(config) -> None:
    # registered here rather than in pyproject.toml's marker list (see test_pdf.py)
    config.addinivalue_line("markers", "pdf: needs the PDF edition built by `make pdf`")


def toc_files() -> list[str]:
    """Every document named in _toc.yml, in reading order (without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(s["file"] for s in chapter.get("sections", []))
    return files


@pytest.fixture(scope="session")
def scratch_home(tmp_path_factory) -> dict[str, str]:
    """Environment whose HOME (and Jupyter/matplotlib dirs) point at a scratch folder."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ)
    env.update(HOME=str(home), MPLCONFIGDIR=str(home / "mpl"), JUPYTER_DATA_DIR=str(home / "jupyter"),
               IPYTHONDIR=str(home / "ipython"))
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """gradlab built as a wheel and installed into a folder of its own: ``(wheel, site)``."""
    from tests.notebooks.standalone import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def built_html() -> Path:
    index = HTML / "index.html"
    if not index.exists():
        pytest.fail("the book is not built: run `make book` (or `make test`, which builds it) first")
    return HTML


__all__ = ["BUILD", "CHAPTERS", "HTML", "ROOT", "chapter_sources", "toc_files"]
