import math

import numpy as np
import pytest
from PIL import Image

from rbwa.analysis.plots import COLORS, curve_band, legend_label, line_styles, plot_curves, plot_gain


def test_curve_band_uses_only_epochs_every_run_has():
    a = [{"epoch": 0, "loss": None}, {"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]
    b = [{"epoch": 0, "loss": None}, {"epoch": 1, "loss": 4.0}]  # interrupted after epoch 1
    epochs, mean, lo, hi = curve_band([a, b], "loss")
    assert epochs.tolist() == [1] and mean.tolist() == [3.0] and lo.tolist() == [2.0] and hi.tolist() == [4.0]


def test_plots_are_written_atomically_as_png(tmp_path):
    runs = [[{"epoch": e, "test_acc": 10.0 * e + s, "train_loss": None if e == 0 else 1.0 / e} for e in range(4)]
            for s in range(2)]
    curves = plot_curves({"sgd": runs, "rbwa": runs}, tmp_path / "c.png", "title", start_epoch=1)
    gain = plot_gain([(16, 1.0, 0.5, 1.5, 1.49), (32, -1.0, math.nan, math.nan, None)], tmp_path / "g.png",
                     "gain", "batch size")
    for path in (curves, gain):
        with Image.open(path) as image:
            assert image.format == "PNG" and np.asarray(image).std() > 0  # not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "g.png"]  # no temporaries left


def test_every_line_of_a_figure_is_told_apart():
    labels = ["sgd", "rbwa", "sgd (harmonic LR, = rbwa)", "rbwa-e", "sgd (rbwa-e's LR, = rbwa-e)",
              "sgd (step x0.1 at start)", "sgd (cosine LR)", "swa"]
    styles = line_styles(labels)
    assert styles["sgd (harmonic LR, = rbwa)"] == (COLORS["rbwa"], ":")  # dotted over the method it equals
    assert styles["sgd (rbwa-e's LR, = rbwa-e)"] == (COLORS["rbwa-e"], ":")
    assert styles["swa"] == (COLORS["swa"], "--") and styles["sgd"] == (COLORS["sgd"], "-")
    assert len(set(styles.values())) == len(labels)


def test_accuracy_axis_stops_at_100(tmp_path, monkeypatch):
    from rbwa.analysis import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    runs = [[{"epoch": e, "test_acc": a, "train_loss": 0.1} for e, a in enumerate((50.0, 99.0, 100.0))]] * 2
    plots.plot_curves({"sgd": runs, "rbwa": runs}, tmp_path / "x.png", "t", start_epoch=1)
    assert figures[0].axes[0].get_ylim()[1] == 100.0


def test_a_legend_names_each_lines_seeds_where_they_differ():
    assert legend_label("swa", 3, False) == "swa (side copy)"
    assert legend_label("sgd (cosine LR)", 2, True) == "sgd (cosine LR), 2 seeds"
    assert legend_label("ema", 1, True) == "ema (side copy), 1 seed"


def test_methods_whose_curves_coincide_stay_visible_by_their_hollow_markers(tmp_path, monkeypatch):
    """On easy data RBWA and RBWA-E end on the same accuracy: drawn as plain lines, the later hides the earlier."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    run = [[{"epoch": e, "test_acc": 90.0, "train_loss": 0.1} for e in range(3)]]
    plot_curves({"rbwa": run, "rbwa-e": run, "sgd (harmonic LR, = rbwa)": run}, tmp_path / "c.png", "t")
    lines = {line.get_label(): line for line in kept[0].axes[0].get_lines()}
    assert (lines["rbwa"].get_marker(), lines["rbwa-e"].get_marker()) == ("o", "s")
    assert lines["rbwa"].get_markerfacecolor() == "none" and lines["sgd (harmonic LR, = rbwa)"].get_marker() == "None"


def test_the_loss_panel_holds_every_band_and_skips_what_it_cannot_draw():
    from rbwa.analysis.plots import loss_limits

    e = np.array([0, 1, 2, 3])
    band = (e, np.array([9.0, 2.0, 1.5, 1.2]), np.array([8.0, 1.8, 1.4, 1.0]), np.array([10.0, 2.2, 1.6, 1.3]))
    assert loss_limits([band], 1, "linear") == (None, pytest.approx(2.2 + 0.1))  # the band's top, not the mean's
    assert loss_limits([band], 3, "linear") == (None, pytest.approx(1.3 + 0.03))  # a tenth of the range 1.0..1.3
    assert loss_limits([band], 1, "log") == (pytest.approx(1.0 / 1.1), pytest.approx(2.2 * 1.1))
    flat = (e[:2], np.array([1.5, 1.5]), np.array([1.5, 1.5]), np.array([1.5, 1.5]))
    assert loss_limits([flat], 1, "linear") == (None, pytest.approx(1.6))  # one value: not on the frame
    odd = (e, np.array([1.0, 0.0, np.nan, np.inf]), np.array([1.0, 0.0, np.nan, np.inf]),
           np.array([1.0, 0.5, np.nan, np.inf]))
    assert loss_limits([odd], 1, "log") == (pytest.approx(0.5 / 1.1), pytest.approx(0.5 * 1.1))
    assert loss_limits([odd], 2, "log") is None and loss_limits([], 1, "linear") is None


def test_the_lr_sweep_draws_each_mean_with_its_seed_range_and_marks_a_diverged_seed(tmp_path, monkeypatch):
    from rbwa.analysis import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    lines = {"cosine": {1e-3: {0: 1.6, 1: 1.8}, 2e-3: {0: 1.5, 1: math.inf}},
             "WSD, decay 0.1": {1e-3: {0: 1.4, 1: 1.4}}}
    plots.plot_lr_sweep(lines, tmp_path / "s.png", "t")
    ax = figures[0].axes[0]
    drawn = [line for line in ax.get_lines() if len(line.get_xdata())]
    # cosine: the mean of 1.6 and 1.8 at 1e-3, seed 0's 1.5 alone at 2e-3 (seed 1 diverged: an x on that point)
    assert [list(line.get_ydata()) for line in drawn[:1]] == [[pytest.approx(1.7), 1.5]]
    marks = [line for line in drawn if line.get_marker() == "x"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [2e-3] and list(marks[0].get_ydata()) == [1.5]
    # where every seed of a rate diverged, the x sits at the top of the figure (the highest finite loss)
    figures.clear()
    plots.plot_lr_sweep({"cosine": {1e-3: {0: 1.6, 1: 1.8}, 2e-3: {0: math.inf, 1: math.inf}}}, tmp_path / "s.png", "t")
    (mark,) = [line for line in figures[0].axes[0].get_lines() if line.get_marker() == "x"]
    assert list(mark.get_ydata()) == [1.8]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cosine (2 seeds)", "WSD, decay 0.1 (2 seeds)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.002"]
