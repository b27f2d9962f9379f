"""The summary rows of an experiment: per (setting, method) the statistics over seeds, the paired difference to SGD,
and the paper's reported numbers beside them (PAPER, TABLE1: the paper's; ANCHORS: reference points from elsewhere).
"""

from __future__ import annotations

import math
from typing import Any

from rbwa.analysis.findings.core import LAST_EPOCHS, Experiment, Run, folder_name, measure
from rbwa.analysis.stats import mean_std, paired_difference

# The paper's reported final test accuracy (%) and final loss (PAPER.md), keyed (dataset, model, batch, method).
PAPER: dict[tuple[str, str, int, str], tuple[float, float]] = {
    ("cifar10", "resnet18", 64, "sgd"): (81.98, 0.013), ("cifar10", "resnet18", 64, "rbwa"): (83.36, 0.002),
    ("cifar10", "vgg16", 64, "sgd"): (86.31, 0.0076), ("cifar10", "vgg16", 64, "rbwa"): (88.82, 0.0001),
    ("cifar100", "resnet18", 64, "sgd"): (57.8, 0.0016), ("cifar100", "resnet18", 64, "rbwa"): (60.33, 0.0009),
    ("cifar100", "vgg16", 64, "sgd"): (56.16, 0.026), ("cifar100", "vgg16", 64, "rbwa"): (58.95, 0.002),
}
# Table 1 (ResNet-18, CIFAR-10) by batch size; batch 64 differs slightly from the main table, as printed.
TABLE1 = {16: ((82.27, 0.01776), (83.76, 0.00473)), 32: ((82.5, 0.01760), (84.25, 0.00384)),
          64: ((82.31, 0.01283), (83.36, 0.00209)), 128: ((82.46, 0.00035), (82.55, 0.00039)),
          256: ((80.56, 0.00038), (80.74, 0.00047))}
# Reference points from elsewhere (PAPER.md), for scale: full-data, tuned, long-budget test accuracy (%).
ANCHORS: dict[tuple[str, str, str], str] = {
    ("cifar10", "resnet18", "sgd"): "93-95.7 (a)", ("cifar100", "resnet18", "sgd"): "75.6-77 (a)",
    ("cifar10", "vgg16", "sgd"): "93.25 (b)", ("cifar10", "vgg16", "swa"): "93.64 (b)",
    ("cifar100", "vgg16", "sgd"): "72.55 (b)", ("cifar100", "vgg16", "swa"): "74.27 (b)",
}
SMALL_BATCHES, LARGE_BATCHES = ("16", "32", "64"), ("128", "256")


def paper_table1_gain(batch: str) -> float:
    """Table 1's RBWA - SGD final test accuracy at one batch size (points)."""
    (sgd, _), (rbwa, _) = TABLE1[int(batch)]
    return rbwa - sgd


def paper_batch_effect() -> float:
    """Table 1's mean RBWA gain at batch 16-64 minus its mean gain at 128-256 (about +1.29 points)."""
    return (sum(map(paper_table1_gain, SMALL_BATCHES)) / len(SMALL_BATCHES)
            - sum(map(paper_table1_gain, LARGE_BATCHES)) / len(LARGE_BATCHES))


def first_config(runs: list[Run]) -> dict[str, Any] | None:
    """The first config among the runs, with ``paper_dataset`` set to the paper's name for its data."""
    cfg = next((r.config for r in runs if r.config), None)
    if cfg is None:
        return None
    name = folder_name(cfg["dataset"]) or cfg["dataset"]
    return {**cfg, "paper_dataset": "cifar100" if "100" in name else "cifar10"}


def paper_numbers(exp: Experiment, setting: str, label: str, runs: list[Run]) -> tuple[float, float] | None:
    """The paper's (accuracy, loss) for one row; table1's come from its setting alone, not from any run's config."""
    if label not in ("sgd", "rbwa"):
        return None
    if exp.name == "table1":
        return TABLE1.get(int(setting), (None, None))[label == "rbwa"]
    cfg = first_config(runs)
    if cfg is None:
        return None
    return PAPER.get((cfg["paper_dataset"], cfg["model"], cfg["batch_size"], label))


def anchor(runs: list[Run], label: str) -> str | None:
    cfg = first_config(runs)
    return None if cfg is None else ANCHORS.get((cfg["paper_dataset"], cfg["model"], label))


def paper_gain(rows: list[dict[str, Any]], setting: str) -> float | None:
    """The paper's RBWA - SGD final test accuracy at one setting, from the rows' paper columns."""
    by = {r["method"]: r["paper_acc"] for r in rows if r["setting"] == setting}
    if by.get("rbwa") is None or by.get("sgd") is None:
        return None
    return by["rbwa"] - by["sgd"]


def summarise(exp: Experiment) -> list[dict[str, Any]]:
    """One row per (setting, label): statistics over seeds and the paired difference to SGD."""
    groups = exp.groups()
    rows = []
    for (setting, label), runs in groups.items():
        acc, loss = measure(runs, "test_acc"), measure(runs, "train_loss")
        sgd = groups.get((setting, "sgd"), [])
        none = (math.nan, math.nan, math.nan, 0)
        diff = paired_difference(acc, measure(sgd, "test_acc")) if label != "sgd" else none
        loss_diff = paired_difference(measure(sgd, "train_loss"), loss) if label != "sgd" else none
        paper = paper_numbers(exp, setting, label, runs)
        row = {"experiment": exp.name, "setting": setting, "method": label, "n": len(acc),
               "diverged": sum(r.status == "diverged" for r in runs),
               "missing": sum(r.status in ("not run", "incomplete") for r in runs)}
        for name, values in (("final_acc", acc), ("best_acc", _best(runs, "test_acc")), ("final_loss", loss)):
            row[f"{name}_mean"], row[f"{name}_std"], _ = mean_std(list(values.values()))
        rows.append({
            **row,
            "diff_vs_sgd": diff[0], "diff_lo": diff[1], "diff_hi": diff[2], "pairs": diff[3],
            "loss_gain_vs_sgd": loss_diff[0], "loss_gain_lo": loss_diff[1], "loss_gain_hi": loss_diff[2],
            "paper_acc": None if paper is None else paper[0], "paper_loss": None if paper is None else paper[1],
            "anchor_acc": anchor(runs, label),
        })
        last = measure(runs, "test_acc", LAST_EPOCHS)
        rows[-1]["last5_acc_mean"], rows[-1]["last5_acc_std"], _ = mean_std(list(last.values()))
        last_diff = paired_difference(last, measure(sgd, "test_acc", LAST_EPOCHS)) if label != "sgd" else none
        rows[-1].update(last5_diff_vs_sgd=last_diff[0], last5_diff_lo=last_diff[1], last5_diff_hi=last_diff[2])
    return rows


def _best(runs: list[Run], metric: str) -> dict[int, float]:
    """Seed -> the highest ``metric`` at any epoch (epoch 0, before training, included) of each finished run."""
    return {r.seed: max(m[metric] for m in r.metrics) for r in runs if r.finished and r.metrics}
