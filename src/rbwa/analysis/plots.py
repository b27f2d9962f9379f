"""Figures in the paper's style: test accuracy and training loss per epoch, one line per method; and the report's
own (answers, a learning-rate sweep)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SIDE_COPY = ("swa", "ema")  # their training curves are SGD's: drawn dashed so both stay visible
# one colour per method, stable across figures
COLORS = {"sgd": "#444444", "rbwa": "#d62728", "rbwa-e": "#ff7f0e", "rswa": "#8c564b", "swa": "#1f77b4",
          "ema": "#17becf", "lookahead": "#2ca02c", "schedulefree": "#9467bd"}


# hollow markers, so that methods whose curves coincide (rbwa and rbwa-e on easy data) stay visible on each other
MARKERS = {"rbwa": "o", "rbwa-e": "s", "rswa": "D", "swa": "^", "ema": "v", "lookahead": "P", "schedulefree": "X"}
# colours for lines that are not a method of their own (the controls: SGD on another LR schedule)
EXTRA_COLORS = ("#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#98df8a")
LM_LOSS = ("Validation loss", "cross-entropy (nats per token)", "linear")  # a language model's held-out loss panel


def line_styles(labels: list[str]) -> dict[str, tuple[str | None, str]]:
    """Colour and line style per label, distinct within a figure.

    A method keeps its colour in every figure; side copies are dashed (their training curve is SGD's);
    an exact twin ("sgd (..., = rbwa)") is dotted in its twin's colour, so a perfect overlap reads as one.
    """
    extra = iter(EXTRA_COLORS)
    styles = {}
    for label in labels:
        method = label.split(" ")[0]
        twin = label.rsplit("= ", 1)[1].rstrip(")") if "= " in label else None
        if twin in COLORS:
            styles[label] = (COLORS[twin], ":")
        elif label == method or method in SIDE_COPY:
            styles[label] = (COLORS.get(method), "--" if method in SIDE_COPY else "-")
        else:
            styles[label] = (next(extra, None), "-")
    return styles


def legend_label(label: str, seeds: int, name_seeds: bool) -> str:
    """A line's legend entry: a side copy says so; where the labels' seed counts differ, each names its own."""
    side_copy = " (side copy)" if label.split(" ")[0] in SIDE_COPY else ""
    return f"{label}{side_copy}" + (f", {seeds} seed{'s' * (seeds > 1)}" if name_seeds else "")


def curve_band(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max of ``key`` over runs (metrics lists), on the epochs every run has."""
    by_epoch: dict[int, list[float]] = {}
    for metrics in runs:
        for m in metrics:
            if m.get(key) is not None:
                by_epoch.setdefault(m["epoch"], []).append(m[key])
    epochs = sorted(e for e, v in by_epoch.items() if len(v) == len(runs))
    values = np.array([by_epoch[e] for e in epochs], dtype=float).reshape(len(epochs), len(runs))
    return np.array(epochs), values.mean(axis=1), values.min(axis=1), values.max(axis=1)


def loss_limits(bands: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], first: int,
                scale: str) -> tuple[float | None, float] | None:
    """The held-out loss panel's y limits: every band (``curve_band``'s min-max over seeds) from epoch ``first`` on,
    finite values only, and positive ones on a log axis; a linear axis keeps its own bottom and gets a margin on top
    (0.1, or a tenth of the range where that is smaller but not 0). None where nothing is left to show. Pure."""
    values = np.concatenate([np.concatenate([lo[e >= first], hi[e >= first]]) for e, _, lo, hi in bands] or [[]])
    values = values[np.isfinite(values) & ((values > 0) if scale == "log" else True)]
    if not len(values):
        return None
    high, low = float(values.max()), float(values.min())
    if scale == "log":
        return low / 1.1, high * 1.1
    return None, high + (min(0.1, 0.1 * (high - low)) or 0.1)


def plot_curves(groups: dict[str, list[list[dict]]], path: Path, title: str, start_epoch: int | None = None,
                metric: str = "test_acc", loss_axis: tuple[str, str, str] = LM_LOSS) -> Path:
    """Two panels (test accuracy, or with ``metric="test_loss"`` the held-out loss, its title, axis label and scale
    from ``loss_axis``, zoomed to the epochs after the first and the start; training loss, log scale): mean over
    seeds, shaded min-max band."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    n_seeds = sorted({len(runs) for runs in groups.values()})
    styles = line_styles(list(groups))
    for label, runs in groups.items():
        color, linestyle = styles[label]
        for ax, key in ((acc_ax, metric), (loss_ax, "train_loss")):
            epochs, mean, lo, hi = curve_band(runs, key)
            if len(epochs) == 0:
                continue
            marker = None if linestyle == ":" else MARKERS.get(label.split(" ")[0])
            ax.plot(epochs, mean, label=legend_label(label, len(runs), len(n_seeds) > 1), color=color,
                    linewidth=2.4 if linestyle == ":" else 1.6, linestyle=linestyle, marker=marker, markersize=5,
                    markerfacecolor="none", markevery=max(1, len(epochs) // 12))
            if len(runs) > 1 and linestyle != ":":  # a twin's band would hide the one it equals
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.18, linewidth=0)
    if len(n_seeds) > 1:
        band = "line: mean over the seeds each label names; band: min-max"
    else:
        band = f"line: mean of {n_seeds[0]} seeds; band: min-max" if n_seeds[0] > 1 else "single run"
    if metric == "test_loss":  # the held-out loss, zoomed to the epochs from the start (and after the first)
        acc_ax.set(title=loss_axis[0], xlabel="epoch", ylabel=loss_axis[1], yscale=loss_axis[2])
        limits = loss_limits([curve_band(runs, metric) for runs in groups.values()], max(1, start_epoch or 1),
                             loss_axis[2])
        if limits:
            acc_ax.set_ylim(*limits)
    else:
        acc_ax.set(title="Test accuracy", xlabel="epoch", ylabel="test accuracy (%)")
    if start_epoch is not None and metric == "test_acc":  # zoom on the part where the methods differ
        late = [curve_band(runs, "test_acc") for runs in groups.values()]
        low = min((m[e >= start_epoch].min() for e, m, _, _ in late if (e >= start_epoch).any()), default=None)
        if low is not None:
            acc_ax.set_ylim(max(0.0, low - 5.0), None)
            acc_ax.set_title("Test accuracy (zoomed to the epochs after the start)")
    if metric == "test_acc":
        acc_ax.set_ylim(top=min(100.0, acc_ax.get_ylim()[1]))  # an accuracy axis stops at 100%
    loss_ax.set(title="Training loss (mean over the epoch's batches)", xlabel="epoch",
                ylabel="cross-entropy (log scale)", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if start_epoch is not None:
            ax.axvline(start_epoch, color="#999999", linestyle=":", linewidth=1, label="averaging starts")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{title}\n{band}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_gain(points: list[tuple[float, float, float, float, float | None]], path: Path, title: str,
              xlabel: str) -> Path:
    """RBWA - SGD accuracy per setting (x on a log2 axis): ours as mean with its 95% CI, the paper's as markers.

    ``points`` holds (x, mean, ci_low, ci_high, paper) per setting; a NaN interval (one seed) draws no bar.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = np.array([p[0] for p in points], dtype=float)
    mean, lo, hi = (np.array([p[i] for p in points], dtype=float) for i in (1, 2, 3))
    err = np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0)
    ax.errorbar(xs, mean, yerr=err, fmt="o-", color=COLORS["rbwa"], capsize=4, label="ours: mean, 95% CI (paired)")
    paper = [(x, p[4]) for x, p in zip(xs, points) if p[4] is not None]
    if paper:
        ax.plot(*zip(*paper), "s--", color="#777777", markerfacecolor="none", label="paper (single runs)")
    ax.axhline(0.0, color="#444444", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set(title=title, xlabel=xlabel, ylabel="RBWA - SGD final test accuracy (points)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_sweep(lines: dict[str, dict[float, dict[int, float]]], path: Path, title: str) -> Path:
    """Final validation loss against peak learning rate (log axis), a line per method: the mean over seeds, bars
    from the lowest to the highest seed; the legend counts each line's seeds. A single rate is a point (WSD's other
    decay lengths). A non-finite loss (a diverged run) is left out of the mean, and an x marks its rate on the line
    (at the top where no seed is left)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    top = max((v for by_lr in lines.values() for seeds in by_lr.values() for v in seeds.values()
               if math.isfinite(v)), default=1.0)
    for i, (name, by_lr) in enumerate(lines.items()):
        xs = sorted(by_lr)
        finite = [[v for v in by_lr[x].values() if math.isfinite(v)] for x in xs]
        keep = [j for j, f in enumerate(finite) if f]
        mean = np.array([np.mean(finite[j]) for j in keep])
        lo = np.array([min(finite[j]) for j in keep])
        hi = np.array([max(finite[j]) for j in keep])
        colour = (list(COLORS.values()) + list(EXTRA_COLORS))[i % (len(COLORS) + len(EXTRA_COLORS))]
        n = max(len(by_lr[x]) for x in xs)
        ax.errorbar([xs[j] for j in keep], mean, yerr=np.stack([mean - lo, hi - mean]), fmt="o-" if len(xs) > 1
                    else "D", color=colour, capsize=3, markerfacecolor="none", label=f"{name} ({n} seeds)")
        # a rate where a seed diverged: an x on the line's point there (its other seeds' mean), or at the top
        at = {xs[j]: m for j, m in zip(keep, mean)}
        failed = [x for x, f in zip(xs, finite) if len(f) < len(by_lr[x])]
        if failed:
            ax.plot(failed, [at.get(x, top) for x in failed], "x", color=colour, markersize=9)
    rates = sorted({x for by_lr in lines.values() for x in by_lr})
    ax.set_xscale("log", base=2)
    ax.set_xticks(rates, [f"{x:g}" for x in rates])
    ax.set(title=title, xlabel="peak learning rate", ylabel="final validation loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_effective_lr(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str,
                      start_epoch: float) -> Path:
    """Effective learning rate (fold weight x lr) against training progress in epochs, log scale.

    ``series`` maps a label to (epoch of each step, effective LR of each step).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (label, (x, y)), style in zip(series.items(), ("-", "--", "-.", ":")):
        ax.plot(x, y, style, label=label, linewidth=1.6)
    ax.axvline(start_epoch, color="#444444", linewidth=1, linestyle=":")
    ax.annotate(" averaging starts", (start_epoch, ax.get_ylim()[1]), va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set(title=title, xlabel="training progress (epochs; every step is one point)",
           ylabel="effective learning rate (fold weight x lr)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_posthoc(rows: list[dict], own: float, path: Path, title: str, own_label: str = "the run's final weights",
                 sgd: float | None = None, metric: str = "test_acc") -> Path:
    """Test accuracy (or ``metric``: a language model's ``test_loss``) of post-hoc side averages: against SWA's
    start, LAWA's window and EMA's half-life, with the run's own final value (and constant-LR SGD's, where given)
    as horizontal lines."""
    panels = (("swa", "SWA: start (epoch)"), ("lawa", "LAWA: window (epoch ends)"), ("ema", "EMA: half-life (steps)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, (family, xlabel) in zip(axes, panels, strict=True):
        points = sorted((r["value"], r[metric]) for r in rows if r["family"] == family)
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=COLORS["swa" if family != "ema" else "ema"], ms=3)
        ax.axhline(own, color=COLORS["sgd"], ls="--", label=own_label)
        if sgd is not None:
            ax.axhline(sgd, color=COLORS["rbwa"], ls=":", label="constant-LR SGD")
        if family == "ema":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)" if metric == "test_acc" else "validation loss (nats per token)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()  # or the x labels fall off the bottom
    return _save(fig, path)


def plot_forest(groups: list[tuple[str, list[tuple[str, float, float, float, bool]]]], path: Path) -> Path:
    """A forest plot: one panel per group (its title names the unit), one row per (label, mean, CI low, CI high,
    settled), the mean with its 95% interval; filled where Holm's correction settles it, hollow where it does not. A
    NaN interval (fewer than 2 seeds) draws the mean alone."""
    sizes = [len(rows) for _, rows in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, 0.9 * len(groups) + 0.22 * sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": [n + 1.5 for n in sizes]})
    for ax, (title, rows) in zip(axes[:, 0], groups, strict=True):
        y = np.arange(len(rows))[::-1]
        for yi, (_, mean, lo, hi, settled) in zip(y, rows, strict=True):
            color = COLORS["rbwa"] if settled else "#555555"
            if not (np.isnan(lo) or np.isnan(hi)):
                ax.plot([lo, hi], [yi, yi], color=color, linewidth=1.4)
            ax.plot(mean, yi, "o", color=color, markerfacecolor=color if settled else "white", markersize=5)
        ax.axvline(0.0, color="#444444", linewidth=0.8)
        ax.set_yticks(y, [label for label, *_ in rows], fontsize=7.5)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7.5)
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].plot([], [], "o", color=COLORS["rbwa"], label="settled after Holm's correction")
    axes[0, 0].plot([], [], "o", color="#555555", markerfacecolor="white", label="not settled")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.supxlabel("paired difference, 95% CI (positive: the question's claim holds)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
