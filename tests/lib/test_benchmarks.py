"""gradlab.benchmarks: the stored results ship with the package and load by name."""

from __future__ import annotations

import json

import matplotlib
import pytest

from gradlab import benchmarks

matplotlib.use("Agg")


def test_every_stored_file_loads_and_says_what_it_measured():
    listing = benchmarks.available()
    assert {"clip", "optim", "sparse", "spectral", "compress", "case_study"} <= set(listing)
    for name, devices in listing.items():
        loaded = benchmarks.load(name)
        assert list(loaded) == devices and devices[0] == "cpu"
        for device, record in loaded.items():
            raw = json.loads((benchmarks.RESULTS / device / f"{name}.json").read_text())
            assert record == raw
            assert {"benchmark", "device", "torch", "cases"} <= set(record) and record["cases"]


def test_quick_smoke_results_are_not_stored_results(tmp_path, monkeypatch):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "clip.json").write_text('{"cases": [1]}')
    (tmp_path / "cpu" / "clip-quick.json").write_text('{"cases": [2]}')
    monkeypatch.setattr(benchmarks, "RESULTS", tmp_path)
    assert benchmarks.available() == {"clip": ["cpu"]}
    assert benchmarks.load("clip") == {"cpu": {"cases": [1]}}


@pytest.mark.parametrize("bad", ["nonsense", "", "*", "cpu/clip", 3])
def test_unknown_names_are_refused_with_the_known_ones(bad):
    with pytest.raises(ValueError, match="clip|benchmark's name"):
        benchmarks.load(bad)


def test_plot_helpers_draw_the_stored_results():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    devices = benchmarks.plot_optim(ax)
    assert devices == list(benchmarks.load("optim")) and len(ax.lines) > len(devices)
    fig2, ax2 = plt.subplots()
    benchmarks.plot_compress(ax2, benchmarks.load("compress")["cpu"])
    assert ax2.lines and "torch" in ax2.get_title()
    plt.close(fig)
    plt.close(fig2)
