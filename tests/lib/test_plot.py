import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402

from gradlab import plot  # noqa: E402


def test_palette_is_okabe_ito_and_distinct():
    assert len(set(plot.PALETTE)) == len(plot.PALETTE) == 8
    assert plot.PALETTE[0].upper() == "#0072B2"
    for c in plot.PALETTE:
        mcolors.to_rgb(c)


def test_book_style_is_scoped():
    before = mpl.rcParams["axes.spines.top"]
    with plot.book_style():
        assert mpl.rcParams["axes.spines.top"] is False
        assert mpl.rcParams["axes.prop_cycle"].by_key()["color"][0] == plot.PALETTE[0]
    assert mpl.rcParams["axes.spines.top"] == before


def test_figure_log_y_and_threshold():
    with plot.book_style():
        fig, axes = plot.figure(2, width=6, height=2)
        assert len(axes) == 2
        assert fig.get_size_inches().tolist() == [6, 2]
        plot.log_y(axes[0], "norm")
        assert axes[0].get_yscale() == "log" and axes[0].get_ylabel() == "norm"
        plot.log_x(axes[0], "step")
        assert axes[0].get_xscale() == "log" and axes[0].get_xlabel() == "step"
        assert isinstance(axes[0].xaxis.get_minor_formatter(), matplotlib.ticker.NullFormatter)
        plot.annotate_threshold(axes[1], 1.0, "one")
        assert any(t.get_text() == "one" for t in axes[1].texts)
        matplotlib.pyplot.close(fig)
