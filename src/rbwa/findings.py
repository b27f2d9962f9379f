"""Run directories -> the numbers and the claims: per-seed measures, summary rows and findings, no rendering.

Reads only what `rbwa reproduce` wrote (the experiment manifests ``DIR/<experiment>.json`` and each run's
config.json, metrics.jsonl, summary.json); it never imports the trainer. The paper's numbers come from PAPER
below; every other number is computed from the runs. report.py turns these into figures, tables and text.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.io import read_jsonl
from rbwa.stats import mean_ci, mean_std, paired_difference, paired_p, verdict, within

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
LAST_EPOCHS = 5  # the second measure: mean over the last epochs, which a single noisy final epoch cannot sway
LOSS_TOLERANCE = 1e-4  # training losses closer than this at every epoch of every seed count as no difference
ORDER = ["fig3", "fig5", "table1", "variants", "controls", "alternatives", "writeback"]  # the paper's, then ours
SMALL_BATCHES, LARGE_BATCHES = ("16", "32", "64"), ("128", "256")


def paper_table1_gain(batch: str) -> float:
    """Table 1's RBWA - SGD final test accuracy at one batch size (points)."""
    (sgd, _), (rbwa, _) = TABLE1[int(batch)]
    return rbwa - sgd


def paper_batch_effect() -> float:
    """Table 1's mean RBWA gain at batch 16-64 minus its mean gain at 128-256 (about +1.29 points)."""
    return (sum(map(paper_table1_gain, SMALL_BATCHES)) / len(SMALL_BATCHES)
            - sum(map(paper_table1_gain, LARGE_BATCHES)) / len(LARGE_BATCHES))


@dataclass
class Run:
    path: Path
    setting: str
    label: str
    seed: int
    config: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "finished")
        return "incomplete" if self.metrics else "not run"

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class Experiment:
    name: str
    title: str
    setting: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)  # the flags given to `rbwa reproduce`
    runs: list[Run] = field(default_factory=list)

    def groups(self) -> dict[tuple[str, str], list[Run]]:
        out: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for r in self.runs:
            out[(r.setting, r.label)].append(r)
        return out


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def load_experiments(root: Path) -> list[Experiment]:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the --out of `rbwa reproduce`")
    experiments = []
    for manifest in sorted(root.glob("*.json")):
        spec = _json(manifest)
        if not isinstance(spec, dict) or "experiment" not in spec:
            continue
        exp = Experiment(spec["experiment"], spec["title"], spec["setting"], spec["preset"], spec.get("overrides", {}))
        for entry in spec["runs"]:
            path = root / entry["run"]
            exp.runs.append(Run(path, entry["setting"], entry["label"], entry["seed"], _json(path / "config.json"),
                                read_jsonl(path / "metrics.jsonl"), _json(path / "summary.json")))
        experiments.append(exp)
    experiments.sort(key=lambda e: ORDER.index(e.name) if e.name in ORDER else len(ORDER))
    if not experiments:
        raise UserError(f"{root} holds no experiment manifests (*.json written by `rbwa reproduce`)")
    return experiments


def _config(runs: list[Run]) -> dict[str, Any] | None:
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
    cfg = _config(runs)
    if cfg is None:
        return None
    return PAPER.get((cfg["paper_dataset"], cfg["model"], cfg["batch_size"], label))


def anchor(runs: list[Run], label: str) -> str | None:
    cfg = _config(runs)
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
        acc, loss = _measure(runs, "test_acc"), _measure(runs, "train_loss")
        sgd = groups.get((setting, "sgd"), [])
        none = (math.nan, math.nan, math.nan, 0)
        diff = paired_difference(acc, _measure(sgd, "test_acc")) if label != "sgd" else none
        loss_diff = paired_difference(_measure(sgd, "train_loss"), loss) if label != "sgd" else none
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
        last = _measure(runs, "test_acc", LAST_EPOCHS)
        rows[-1]["last5_acc_mean"], rows[-1]["last5_acc_std"], _ = mean_std(list(last.values()))
        last_diff = paired_difference(last, _measure(sgd, "test_acc", LAST_EPOCHS)) if label != "sgd" else none
        rows[-1].update(last5_diff_vs_sgd=last_diff[0], last5_diff_lo=last_diff[1], last5_diff_hi=last_diff[2])
    return rows


@dataclass
class Finding:
    """One claim put to the runs: per-seed paired differences (positive = the claim holds) under two measures."""

    claim: str
    what: str  # the difference, in words: "RBWA - SGD"
    final: dict[int, float]  # seed -> difference of the final-epoch values (the paper's measure)
    last: dict[int, float]  # seed -> difference of the means over the last LAST_EPOCHS epochs
    curve: list[float] = field(default_factory=list)  # the difference at every epoch of every seed
    tolerance: float = 0.0  # the size below which a difference counts as none
    claimed: float | None = None  # the paper's own difference, where it reports one
    digits: int = 2
    unit: str = " points"
    note: str = ""
    show_curve: bool = False  # twin comparisons always show the largest difference over the curve
    key: tuple = ()  # what is tested (metric and runs): two experiments that share runs share a test; () = unique
    machines: dict[int, str] = field(default_factory=dict)  # seed -> how its two runs' machines differ, where they do

    @property
    def same(self) -> bool:
        return within(self.curve, self.tolerance)

    def stats(self, which: str) -> tuple[float, float, float, int]:
        values = self.final if which == "final" else self.last
        mean, lo, hi = mean_ci(list(values.values()))
        return mean, lo, hi, len(values)

    def verdict(self, which: str = "final") -> str:
        _, lo, hi, _ = self.stats(which)
        return verdict(lo, hi, self.claimed if which == "final" else None, self.same)

    @property
    def p(self) -> float:
        return paired_p(list(self.final.values()))


def _measure(runs: list[Run], metric: str, last: int = 1) -> dict[int, float]:
    """Seed -> the mean of ``metric`` over the last ``last`` trained epochs (epoch >= 1) of each finished run."""
    out = {}
    for r in runs:
        values = [m[metric] for m in r.metrics if m["epoch"] > 0][-last:]
        if r.finished and values and None not in values:
            out[r.seed] = sum(values) / len(values)
    return out


def _best(runs: list[Run], metric: str) -> dict[int, float]:
    """Seed -> the highest ``metric`` at any epoch (epoch 0, before training, included) of each finished run."""
    return {r.seed: max(m[metric] for m in r.metrics) for r in runs if r.finished and r.metrics}


def _curve(a: list[Run], b: list[Run], metric: str) -> list[float]:
    """a - b at every epoch both runs of a seed reached, over every seed both have."""
    bs = {r.seed: {m["epoch"]: m[metric] for m in r.metrics} for r in b if r.finished}
    out = []
    for r in a:
        if r.finished and r.seed in bs:
            out += [m[metric] - bs[r.seed][m["epoch"]] for m in r.metrics
                    if m.get(metric) is not None and bs[r.seed].get(m["epoch"]) is not None]
    return out


def machine(run: Run) -> tuple[Any, Any]:
    """What a run's float rounding depends on beyond its code: the CPU kind (None where it was not recorded)
    and the torch thread count."""
    versions = (run.summary or {}).get("versions", {})
    return versions.get("cpu"), versions.get("torch_threads")


def machine_differences(a: list[Run], b: list[Run]) -> dict[int, str]:
    """Seed -> how the machines of its two runs differ, for the seeds whose runs recorded different ones: their
    difference holds float rounding besides the method."""
    theirs = {r.seed: machine(r) for r in b if r.finished}
    out = {}
    for r in a:
        if r.finished and r.seed in theirs and machine(r) != theirs[r.seed]:
            (cpu, threads), (cpu_b, threads_b) = machine(r), theirs[r.seed]
            parts = ([f"CPU {cpu or 'not recorded'} against {cpu_b or 'not recorded'}"] * (cpu != cpu_b)
                     + [f"torch threads {threads} against {threads_b}"] * (threads != threads_b))
            out[r.seed] = ", ".join(parts)
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _test_images(runs: list[Run]) -> int | None:
    return next((r.summary.get("test_size") for r in runs if r.summary and r.summary.get("test_size")), None)


def compare(claim: str, what: str, a: list[Run], b: list[Run], metric: str = "test_acc",
            **kw: Any) -> Finding:
    """The finding that ``a`` beats ``b`` on ``metric``: higher accuracy, or lower loss for a loss metric.

    The 'no difference' tolerance: accuracies at most one test image apart, losses at most LOSS_TOLERANCE.
    """
    sign = -1.0 if metric.endswith("loss") else 1.0
    test_images = _test_images(a + b)

    def diffs(last: int) -> dict[int, float]:
        return {s: sign * d for s, d in _paired(_measure(a, metric, last), _measure(b, metric, last)).items()}

    # accuracy: at most one test image apart (a float margin keeps one image's worth inside); loss: LOSS_TOLERANCE
    tolerance = LOSS_TOLERANCE if sign < 0 else (100.0 / test_images * (1 + 1e-9) if test_images else 0.0)
    key = (metric, tuple(sorted(str(r.path) for r in a)), tuple(sorted(str(r.path) for r in b)))
    return Finding(claim, what, diffs(1), diffs(LAST_EPOCHS), _curve(a, b, metric), tolerance,
                   digits=4 if sign < 0 else 2, unit="" if sign < 0 else " points", key=key,
                   machines=machine_differences(a, b), **kw)


POSTHOC_FAMILIES = {"swa": "SWA start", "lawa": "LAWA window", "ema": "EMA half-life"}
# the runs the best post-hoc side average is measured against, by the label they have in any experiment
POSTHOC_BASELINES = {"rbwa": "RBWA", "sgd (cosine LR)": "SGD with a cosine schedule"}


def posthoc_rows(run: Run) -> list[dict[str, Any]]:
    """The candidates ``rbwa posthoc`` evaluated for a run (its posthoc/posthoc.csv), [] where it has none."""
    from rbwa.posthoc import read_results

    return read_results(run.path)


def choose_on_others(accuracy: dict[int, dict[str, float]]) -> dict[int, str]:
    """Held-out seed -> the candidate with the highest mean accuracy over the *other* seeds, so that the number
    a seed reports is never a maximum over its own noise. Pure."""
    out = {}
    for held in accuracy:
        others = [s for s in accuracy if s != held]
        labels = set.intersection(*(set(accuracy[s]) for s in others)) & set(accuracy[held])
        out[held] = max(sorted(labels), key=lambda c: sum(accuracy[s][c] for s in others) / len(others))
    return out


def posthoc_claims(exp: Experiment, experiments: list[Experiment]) -> list[Finding | str]:
    """What the best side average gains: per family, the candidate chosen on the other seeds, tested on the held-out
    seed, against the run's own final weights (constant-LR SGD, the same trajectory), RBWA and SGD with a cosine
    schedule (the runs of the same seed in this directory's other experiments)."""
    from rbwa.posthoc import bn_text

    tables = {r.seed: posthoc_rows(r) for r in exp.runs if r.finished}  # each run's posthoc.csv, read once
    runs = {r.seed: r for r in exp.runs if r.finished and tables[r.seed]}
    if len(runs) < 2:
        return []
    baselines: dict[str, list[Run]] = {"constant-LR SGD (the same run's final weights)": list(runs.values())}
    for other in experiments:
        for (setting, label), group in other.groups().items():
            if label in POSTHOC_BASELINES and setting == exp.runs[0].setting:
                baselines.setdefault(POSTHOC_BASELINES[label], group)
    every = [row for s in runs for row in tables[s]]
    out: list[Finding | str] = [f"Every candidate's BatchNorm statistics were re-estimated on {bn_text(every)} "
                                "(`rbwa posthoc --bn-images`); the baselines' runs re-estimate none."]
    for family, name in POSTHOC_FAMILIES.items():
        accuracy = {s: {r["label"]: r["test_acc"] for r in tables[s] if r["family"] == family} for s in runs}
        if not all(accuracy.values()):
            continue
        chosen = choose_on_others(accuracy)
        alone = {s: max(a, key=a.get) for s, a in accuracy.items()}
        held = {s: accuracy[s][c] for s, c in chosen.items()}
        out.append(f"Post-hoc {name}, chosen on the other seeds: " + "; ".join(
            f"seed {s}: {c} ({held[s]:.2f}%)" for s, c in sorted(chosen.items())) + "; the best on each seed alone: "
            + "; ".join(f"seed {s}: {c}" for s, c in sorted(alone.items()))
            + (" (the same on every seed)" if len(set(alone.values())) == 1 else " (it differs between seeds)"))
        for baseline, group in baselines.items():
            theirs = {r.seed: r.metrics[-1]["test_acc"] for r in group if r.finished and r.metrics}
            diffs = {s: held[s] - theirs[s] for s in held if s in theirs}
            if len(diffs) < 2:
                continue
            out.append(Finding(f"Does the best post-hoc {name}, chosen on the other seeds, beat {baseline}?",
                               f"post-hoc {family} - {baseline.split(' (')[0]}", diffs, {},
                               key=("posthoc", family, baseline),
                               machines=machine_differences(list(runs.values()), group)))
    return out


def claims(exp: Experiment, rows: list[dict[str, Any]]) -> list[Finding | str]:
    """The paper's claims that this experiment tests, as findings (and plain lines for claim 3b)."""
    groups = exp.groups()
    out: list[Finding | str] = []

    if exp.name in ("fig3", "fig5", "table1"):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            rbwa, sgd = groups.get((setting, "rbwa"), []), groups.get((setting, "sgd"), [])
            if not _paired(_measure(rbwa, "test_acc"), _measure(sgd, "test_acc")):
                continue
            gain = paper_gain(rows, setting)
            out.append(compare(f"Claim 1, {exp.setting} {setting}: RBWA reaches higher final test accuracy than SGD",
                               "RBWA - SGD", rbwa, sgd, claimed=gain,
                               note=f"; paper: {'-' if gain is None else f'{gain:+.2f}'}"))
            out.append(compare(f"Claim 2, {exp.setting} {setting}: RBWA's final training loss is lower than SGD's",
                               "SGD - RBWA", rbwa, sgd, "train_loss"))
    if exp.name == "table1":
        def effect(last: int) -> dict[int, float]:
            gains: dict[int, dict[str, float]] = defaultdict(dict)
            for (setting, label), runs in groups.items():
                if label == "rbwa":
                    sgd = _measure(groups.get((setting, "sgd"), []), "test_acc", last)
                    for seed, d in _paired(_measure(runs, "test_acc", last), sgd).items():
                        gains[seed][setting] = d
            return {s: sum(g[b] for b in SMALL_BATCHES) / len(SMALL_BATCHES)
                    - sum(g[b] for b in LARGE_BATCHES) / len(LARGE_BATCHES)
                    for s, g in gains.items() if set(SMALL_BATCHES + LARGE_BATCHES) <= set(g)}

        if effect(1):
            paper = paper_batch_effect()
            out.append(Finding("Claim 3: the gain is larger at batch sizes 16-64 than at 128-256",
                               "mean gain at 16-64 minus mean gain at 128-256", effect(1), effect(LAST_EPOCHS),
                               claimed=paper, note=f"; paper: {paper:+.2f}"))
        rbwa_rows = [r for r in rows if r["method"] == "rbwa" and r["n"]]
        if len(rbwa_rows) == len(TABLE1):  # only once every batch size has runs
            top = max(rbwa_rows, key=lambda r: r["final_acc_mean"])
            others = ", ".join(f"{r['setting']}: {r['final_acc_mean']:.2f}%" for r in rbwa_rows if r is not top)
            spread = max(r["final_acc_std"] for r in rbwa_rows)
            out.append(f"Claim 3b: the best batch size for RBWA is 32 (paper): ours is **{top['setting']}** "
                       f"({top['final_acc_mean']:.2f}% mean final test accuracy; {others}; the std over seeds "
                       f"is up to {spread:.2f} points).")
    if exp.name in ("variants", "alternatives", "writeback"):
        for (setting, label), runs in groups.items():
            sgd = groups.get((setting, "sgd"), [])
            if label == "sgd" or not _paired(_measure(runs, "test_acc"), _measure(sgd, "test_acc")):
                continue
            out.append(compare(f"Does {label} beat sgd?", f"{label} - sgd", runs, sgd))
            if label.startswith("rbwa"):
                out.append(compare(f"Is {label}'s final training loss lower than sgd's?", f"sgd - {label}",
                                   runs, sgd, "train_loss"))
    if exp.name == "writeback":  # each write-back period against never writing back
        for (setting, label), runs in groups.items():
            never = groups.get((setting, "ema (never written back)"), [])
            if label in ("sgd", "ema (never written back)") or not _paired(_measure(runs, "test_acc"),
                                                                            _measure(never, "test_acc")):
                continue
            out.append(compare(f"Does {label} beat ema (never written back)?", f"{label} - ema", runs, never))
    if exp.name in ("controls", "alternatives"):
        for (setting, label), runs in groups.items():
            if not label.startswith("sgd ("):
                continue
            twin = "rbwa-e" if label.endswith("= rbwa-e)") else "rbwa"  # the other controls are for rbwa
            ours = groups.get((setting, twin), [])
            if _paired(_measure(ours, "test_acc"), _measure(runs, "test_acc")):
                out.append(compare(f"Does {twin} beat {label}?", f"{twin} - control", ours, runs, show_curve=True))
    return out


def folder_name(dataset: str) -> str | None:
    """The folder's name in an image-folder dataset as configs record it (``folder:NAME (...)``), else None."""
    return dataset[len("folder:"):].split(" (")[0].rstrip("/").rsplit("/", 1)[-1] if dataset.startswith("folder:") \
        else None

