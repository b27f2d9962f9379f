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

from rbwa.analysis.stats import contrast, mean_ci, mean_std, paired_difference, paired_p, verdict, within
from rbwa.errors import UserError
from rbwa.io import read_jsonl

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
    commits: dict[int, str] = field(default_factory=dict)  # seed -> the two runs' commits, where they differ
    # independent groups instead of pairs (final, last): (coefficient, values) each, judged by a Welch contrast
    arms: tuple[list[tuple[float, list[float]]], list[tuple[float, list[float]]]] | None = None

    @property
    def same(self) -> bool:
        return within(self.curve, self.tolerance)

    def stats(self, which: str) -> tuple[float, float, float, int]:
        if self.arms is not None:
            arms = self.arms[0 if which == "final" else 1]
            mean, lo, hi, _ = contrast(arms)
            return mean, lo, hi, min(len(values) for _, values in arms)
        values = self.final if which == "final" else self.last
        mean, lo, hi = mean_ci(list(values.values()))
        return mean, lo, hi, len(values)

    def verdict(self, which: str = "final") -> str:
        _, lo, hi, n = self.stats(which)
        return verdict(lo, hi, self.claimed if which == "final" else None, self.same, n)

    @property
    def p(self) -> float:
        return contrast(self.arms[0])[3] if self.arms is not None else paired_p(list(self.final.values()))


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


def commit(run: Run) -> Any:
    """The git commit a run was trained at (None where it recorded none)."""
    return (run.summary or {}).get("versions", {}).get("git")


def commit_differences(a: list[Run], b: list[Run]) -> dict[int, str]:
    """Seed -> its two runs' commits, for the seeds whose runs were trained at different ones."""
    theirs = {r.seed: commit(r) for r in b if r.finished}
    return {r.seed: f"{commit(r)} against {theirs[r.seed]}" for r in a
            if r.finished and r.seed in theirs and commit(r) != theirs[r.seed]}


def provenance(runs: list[Run]) -> str:
    """Where a group of runs was trained, in words: its commits and CPU kinds."""
    done = [r for r in runs if r.finished]
    commits = sorted({str(commit(r)) for r in done})
    cpus = sorted({str(machine(r)[0] or "not recorded") for r in done})
    return f"git {', '.join(commits)} on CPU {'; '.join(cpus)}"


def dataset_name(cfg: dict[str, Any] | None) -> str:
    """The data a config trained on, as a reader names it: CIFAR-10, CIFAR-100, or the dataset as recorded."""
    if cfg is None:
        return "?"
    name = folder_name(cfg["dataset"]) or cfg["dataset"]
    key = name.lower().replace("-", "").replace("_", "")
    return "CIFAR-100" if key.startswith("cifar100") else "CIFAR-10" if key.startswith("cifar10") else name


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
                   machines=machine_differences(a, b), commits=commit_differences(a, b), **kw)


POSTHOC_FAMILIES = {"swa": "SWA start", "lawa": "LAWA window", "ema": "EMA half-life"}
# the runs of other experiments the best post-hoc side average is measured against, by their label
POSTHOC_BASELINES = {"rbwa": "RBWA", "sgd (cosine LR)": "cosine-LR SGD"}
TIE = 1e-9  # means closer than this are a tie


def posthoc_rows(run: Run) -> list[dict[str, Any]]:
    """The candidates ``rbwa posthoc`` evaluated for a run (its posthoc/posthoc.csv), [] where it has none."""
    from rbwa.analysis.posthoc import read_results

    return read_results(run.path)


def choose_on_others(accuracy: dict[int, dict[str, float]], order: dict[str, float] | None = None) -> dict[int, str]:
    """Held-out seed -> the candidate with the highest mean accuracy over the *other* seeds, so that the number
    a seed reports is never a maximum over its own noise. Only candidates that every seed evaluated compete; a tie
    goes to the lowest ``order`` value (the earliest SWA start, the shortest LAWA window or EMA half-life), then
    to the label. Pure."""
    common = set.intersection(*(set(a) for a in accuracy.values())) if accuracy else set()
    out = {}
    for held in accuracy:
        others = [s for s in accuracy if s != held]
        if not common or not others:
            continue
        means = {c: sum(accuracy[s][c] for s in others) / len(others) for c in common}
        top = max(means.values())
        out[held] = min((c for c in common if means[c] >= top - TIE), key=lambda c: ((order or {}).get(c, 0.0), c))
    return out


def best_alone(accuracy: dict[str, float]) -> list[str]:
    """The candidates with a seed's own highest accuracy (more than one where they tie). Pure."""
    top = max(accuracy.values())
    return sorted(c for c, a in accuracy.items() if a >= top - TIE)


def _posthoc_series(exp: Experiment, label: str) -> dict[int, tuple[Run, list[dict[str, Any]]]]:
    """Seed -> (run, its post-hoc rows) for the finished runs of ``label`` that hold their final weights' row."""
    from rbwa.analysis.posthoc import final_reestimated

    found = {}
    for r in exp.runs:
        if r.label == label and r.finished:
            rows = posthoc_rows(r)
            if rows and final_reestimated(rows):
                found[r.seed] = (r, rows)
    return found


def _final_metric(runs: list[Run], metric: str = "test_acc") -> dict[int, float]:
    """Seed -> the final test accuracy (or ``metric``) each finished run recorded (its evaluated weights, BatchNorm
    as trained)."""
    return {r.seed: r.metrics[-1][metric] for r in runs if r.finished and r.metrics}


def _difference(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _scores(series: dict[int, tuple[Run, list[dict[str, Any]]]], family: str,
            metric: str) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    """(seed -> candidate -> score, higher is better; seed -> the candidate chosen on the other seeds)."""
    sign = -1.0 if metric.endswith("loss") else 1.0
    score = {s: {r["label"]: sign * r[metric] for r in rows if r["family"] == family}
             for s, (_, rows) in series.items()}
    order = {r["label"]: r["value"] for _, rows in series.values() for r in rows if r["family"] == family}
    return score, choose_on_others(score, order) if all(score.values()) else {}


def picks_text(picks: dict[int, str]) -> str:
    """'A (seeds 0, 2), B (seed 1)': each chosen candidate with the seeds that chose it, the most chosen first. Pure."""
    by: dict[str, list[int]] = {}
    for seed, choice in sorted(picks.items()):
        by.setdefault(choice, []).append(seed)
    return ", ".join(f"{c} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})"
                     for c, s in sorted(by.items(), key=lambda item: (-len(item[1]), item[1])))


def choose_candidates(series: dict[int, tuple[Run, list[dict[str, Any]]]], family: str, name: str, where: str,
                      out: list[Finding | str], metric: str = "test_acc") -> dict[int, float] | None:
    """Seed -> the ``metric`` of the ``family`` candidate chosen on the other seeds (the highest accuracy, or the
    lowest loss), or None where none can be chosen; the choices, in a line appended to ``out``."""
    sign = -1.0 if metric.endswith("loss") else 1.0
    score, picks = _scores(series, family, metric)
    if all(score.values()) and not set.intersection(*(set(a) for a in score.values())):
        out.append(f"{where}: the seeds' posthoc.csv files share no {name} candidate (each seed was evaluated on "
                   "another grid), so none is chosen; rerun `rbwa posthoc` with the same grid.")
    if len(picks) < 2:
        return None
    alone = {s: " = ".join(best_alone(a)) + (" (a tie)" if len(best_alone(a)) > 1 else "") for s, a in score.items()}
    shown = (lambda v: f"{sign * v:.2f}%") if sign > 0 else (lambda v: f"validation loss {sign * v:.4f}")
    out.append(f"{where}: post-hoc {name}, chosen on the other seeds: " + "; ".join(
        f"seed {s}: {c} ({shown(score[s][c])})" for s, c in sorted(picks.items()))
        + "; the best on each seed alone: " + "; ".join(f"seed {s}: {c}" for s, c in sorted(alone.items()))
        + (" (the same on every seed)" if len(set(alone.values())) == 1 else " (it differs between seeds)"))
    return {s: sign * score[s][c] for s, c in picks.items()}


def posthoc_claims(exp: Experiment, experiments: list[Experiment]) -> list[Finding | str]:
    """What the best side average, chosen after training, is worth, per family: the candidate chosen on the other
    seeds, tested on the held-out seed. Constant-LR SGD's against its own final weights, against cosine-LR SGD's
    (can an average replace the decay?) and against RBWA; cosine-LR SGD's against its own final weights (does
    averaging add on top of the decay?) and against constant-LR SGD's. Final weights are the last snapshot with
    BatchNorm re-estimated like every candidate, so the gain is the averaging's, not the re-estimation's."""
    from rbwa.analysis.posthoc import bn_text, final_reestimated
    from rbwa.experiments.grids import POSTHOC_LABELS

    constant = _posthoc_series(exp, POSTHOC_LABELS["constant"])
    cosine = _posthoc_series(exp, POSTHOC_LABELS["cosine"])
    if len(constant) < 2:
        return across_datasets(exp, experiments)
    first = next(iter(constant.values()))[0]
    data, setting = first.config["dataset"], first.setting
    ds = dataset_name(first.config)
    others: dict[str, list[Run]] = {}
    for other in experiments:
        for (s, label), group in other.groups().items():
            same_data = any(r.config and r.config["dataset"] == data for r in group)
            if label in POSTHOC_BASELINES and s == setting and same_data and other is not exp:
                others.setdefault(POSTHOC_BASELINES[label], group)
    every = [row for series in (constant, cosine) for _, rows in series.values() for row in rows]
    plain = ", ".join(sorted(others))
    out: list[Finding | str] = [
        f"{ds}: every candidate's BatchNorm statistics were re-estimated on {bn_text(every)} (`rbwa posthoc "
        "--bn-images`), and so were the final weights it is compared with (the last snapshot alone, the candidate "
        f"'LAWA, last 1 epoch end'){f'; the runs of other experiments ({plain}) re-estimate none' if plain else ''}. "
        "A candidate is chosen on the other seeds; a tie goes to the earliest SWA start, the shortest LAWA window or "
        "EMA half-life. The runs of another schedule or experiment share a seed's initial weights and batch order, "
        "not its trajectory: those differences compare two runs' outcomes, not one trajectory with itself."]

    def final(series: dict[int, tuple[Run, list[dict[str, Any]]]]) -> dict[int, float]:
        return {s: float(final_reestimated(rows)["test_acc"]) for s, (_, rows) in series.items()}

    def chosen(series: dict[int, tuple[Run, list[dict[str, Any]]]], family: str, name: str,
               what: str) -> dict[int, float] | None:
        return choose_candidates(series, family, name, f"{ds}, {what}", out)

    def test(claim: str, what: str, diffs: dict[int, float], key: str, a: list[Run], b: list[Run],
             note: str = "") -> None:
        if len(diffs) >= 2:
            out.append(Finding(claim, what, diffs, {}, key=("posthoc", data, key), note=note,
                               machines=machine_differences(a, b), commits=commit_differences(a, b)))

    runs_c, runs_k = [r for r, _ in constant.values()], [r for r, _ in cosine.values()]
    for family, name in POSTHOC_FAMILIES.items():
        held = chosen(constant, family, name, "constant-LR SGD")
        if held is None:
            continue
        test(f"{ds}: does the best post-hoc {name} of constant-LR SGD, chosen on the other seeds, beat the same run's "
             "final weights (BatchNorm re-estimated)?", f"post-hoc {family} - final weights",
             _difference(held, final(constant)), f"{family} constant - final", runs_c, runs_c)
        raw = _difference(held, _final_metric(runs_c))
        if len(raw) >= 2:
            mean, lo, hi = mean_ci(list(raw.values()))
            out.append(f"{ds}: against the same runs' final weights with BatchNorm as trained, the post-hoc {name} "
                       f"gains {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] points (not a test: re-estimating BatchNorm alone "
                       "is part of that gain).")
        # the cosine-LR snapshot runs are the fair baseline (their final weights re-estimated like the candidates)
        # once they cover every seed; until then the cosine runs of another experiment, as trained
        if len(cosine) >= max(2, len(constant)):
            test(f"{ds}: can an average replace the decay: does the best post-hoc {name} of constant-LR SGD beat "
                 "cosine-LR SGD's final weights (BatchNorm re-estimated)?", f"post-hoc {family} - cosine-LR SGD",
                 _difference(held, final(cosine)), f"{family} constant - cosine final", runs_c, runs_k)
        elif "cosine-LR SGD" in others:
            group = others["cosine-LR SGD"]
            test(f"{ds}: can an average replace the decay: does the best post-hoc {name} of constant-LR SGD beat "
                 "cosine-LR SGD's final weights (BatchNorm as trained)?", f"post-hoc {family} - cosine-LR SGD",
                 _difference(held, _final_metric(group)), f"{family} constant - cosine (alternatives)", runs_c, group)
        if "RBWA" in others:
            group = others["RBWA"]
            test(f"{ds}: does the best post-hoc {name} of constant-LR SGD, chosen on the other seeds, beat RBWA?",
                 f"post-hoc {family} - RBWA", _difference(held, _final_metric(group)), f"{family} constant - rbwa",
                 runs_c, group)
        held_k = chosen(cosine, family, name, "cosine-LR SGD") if len(cosine) >= 2 else None
        if held_k is None:
            continue
        test(f"{ds}: does averaging add on top of the decay: does the best post-hoc {name} of cosine-LR SGD beat its "
             "final weights (BatchNorm re-estimated)?", f"post-hoc {family} of cosine - final weights",
             _difference(held_k, final(cosine)), f"{family} cosine - final", runs_k, runs_k)
        test(f"{ds}: does the best post-hoc {name} of cosine-LR SGD beat constant-LR SGD's?",
             f"post-hoc {family}: cosine - constant", _difference(held_k, held), f"{family} cosine - constant",
             runs_k, runs_c)
    return out + across_datasets(exp, experiments)


def across_datasets(exp: Experiment, experiments: list[Experiment]) -> list[str]:
    """How stable the SWA start, LAWA window and EMA half-life chosen on the other seeds are across seeds and
    datasets: a line per family, in the last post-hoc experiment's section, once two datasets have choices."""
    from rbwa.experiments.grids import POSTHOC_LABELS

    posthoc = [e for e in experiments if e.name.startswith("posthoc")]
    if not posthoc or posthoc[-1] is not exp:
        return []
    schedules = {"Constant-LR SGD": POSTHOC_LABELS["constant"], "Cosine-LR SGD": POSTHOC_LABELS["cosine"]}
    # schedule -> (dataset, its series) of every post-hoc experiment with at least 2 seeds: each posthoc.csv read once
    by_schedule = {schedule: [(dataset_name(next(iter(series.values()))[0].config), series)
                              for series in (_posthoc_series(e, label) for e in posthoc) if len(series) >= 2]
                   for schedule, label in schedules.items()}
    out = []
    for family, name in POSTHOC_FAMILIES.items():
        parts, datasets = [], 0
        for schedule, found_series in by_schedule.items():
            found = {}
            for ds, series in found_series:
                picks = _scores(series, family, "test_acc")[1]
                if len(picks) >= 2:
                    found[ds] = picks
            if found:
                distinct = {c for picks in found.values() for c in picks.values()}
                seeds = sum(len(picks) for picks in found.values())
                parts.append(f"{schedule}, " + "; ".join(f"on {ds}: {picks_text(p)}" for ds, p in sorted(found.items()))
                             + (f" (one choice on all {seeds} seeds)" if len(distinct) == 1
                                else f" ({len(distinct)} different choices on {seeds} seeds)"))
                datasets = max(datasets, len(found))
        if datasets >= 2:
            out.append(f"Across datasets, the post-hoc {name} chosen on the other seeds. " + ". ".join(parts) + ".")
    return out


def _ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def batch_size_claims(groups: dict[tuple[str, str], list[Run]]) -> list[Finding | str]:
    """Claim 3 (RBWA's gain is larger at batch 16-64 than at 128-256) and 3b (its best batch size is 32).

    The batch sizes are independent runs (a seed's runs at two batch sizes share initial weights, not batches), so
    both are judged by Welch contrasts of group means, never by pairing seeds across batch sizes.
    """
    out: list[Finding | str] = []

    def gains(last: int) -> dict[str, dict[int, float]]:  # batch size -> seed -> RBWA - SGD at that batch size
        return {setting: _paired(_measure(runs, "test_acc", last), _measure(groups.get((setting, "sgd"), []),
                                                                             "test_acc", last))
                for (setting, label), runs in groups.items() if label == "rbwa"}

    def arms(last: int) -> list[tuple[float, list[float]]] | None:
        found = gains(last)
        if not all(found.get(b) for b in SMALL_BATCHES + LARGE_BATCHES):
            return None
        return ([(1 / len(SMALL_BATCHES), list(found[b].values())) for b in SMALL_BATCHES]
                + [(-1 / len(LARGE_BATCHES), list(found[b].values())) for b in LARGE_BATCHES])

    if arms(1):
        paper = paper_batch_effect()
        where: dict[str, list[str]] = defaultdict(list)  # how each batch size's runs were trained -> batch sizes
        for b in SMALL_BATCHES + LARGE_BATCHES:
            where[provenance(groups.get((b, "rbwa"), []) + groups.get((b, "sgd"), []))].append(b)
        trained = "" if len(where) == 1 else "; the batch sizes' runs were trained at " + "; ".join(
            f"{', '.join(bs)}: {how}" for how, bs in where.items())
        out.append(Finding("Claim 3: the gain is larger at batch sizes 16-64 than at 128-256",
                           "mean gain at 16-64 minus mean gain at 128-256", {}, {}, claimed=paper,
                           arms=(arms(1), arms(LAST_EPOCHS)), key=("claim 3",),
                           note=f"; paper: {paper:+.2f}; the batch sizes are independent runs, so this is a Welch "
                                f"contrast of their mean gains (Satterthwaite's degrees of freedom){trained}"))
    accuracy = {setting: list(_measure(runs, "test_acc").values()) for (setting, label), runs in groups.items()
                if label == "rbwa"}
    if set(accuracy) == set(map(str, TABLE1)) and all(len(v) >= 2 for v in accuracy.values()):
        means = {b: mean_std(v)[0] for b, v in accuracy.items()}
        top = max(means, key=means.get)
        against = {b: contrast([(1.0, accuracy[top]), (-1.0, accuracy[b])]) for b in sorted(accuracy, key=int)
                   if b != top}
        level = [b for b, (_, lo, _, _) in against.items() if lo <= 0]
        out.append(f"Claim 3b: the best batch size for RBWA is 32 (paper): our highest mean final test accuracy is at "
                   f"{top} ({means[top]:.2f}%; " + ", ".join(f"{b}: {means[b]:.2f}%" for b in against)
                   + f"); {top} minus each other batch size (Welch 95% intervals, uncorrected): "
                   + "; ".join(f"{b}: {_ci(m, lo, hi)}" for b, (m, lo, hi, _) in against.items())
                   + (f". {top} is not distinguishable from {', '.join(level)}: these runs do not rank those batch "
                      "sizes." if level else f". {top} lies above every other batch size (uncorrected intervals)."))
    return out


LM_BASE = "adamw"  # the lm experiment's constant-LR AdamW runs, which store the snapshots


def lm_claims(exp: Experiment) -> list[Finding | str]:
    """A GPT on text: the paper's claims by validation loss (claim 1) and training loss (claim 2), RBWA against its
    twin and the decay schedules, every other method against constant-LR AdamW, and the best post-hoc average of the
    constant-LR runs' snapshots against their final weights, the schedules and RBWA. Lower loss is better: each
    difference is signed so that a positive one supports the claim."""
    groups = exp.groups()
    out: list[Finding | str] = []

    def paired(a: list[Run], b: list[Run]) -> bool:
        return bool(_paired(_measure(a, "test_loss"), _measure(b, "test_loss")))

    for setting in dict.fromkeys(s for s, _ in groups):
        base, rbwa = groups.get((setting, LM_BASE), []), groups.get((setting, "rbwa"), [])
        if paired(rbwa, base):
            out.append(compare("Claim 1, a GPT on text: RBWA reaches a lower final validation loss than AdamW",
                               "AdamW - RBWA", rbwa, base, "test_loss"))
            out.append(compare("Claim 2, a GPT on text: RBWA's final training loss is lower than AdamW's",
                               "AdamW - RBWA", rbwa, base, "train_loss"))
        for (s, label), runs in groups.items():
            if s != setting or label in (LM_BASE, "rbwa"):
                continue
            if label.startswith(f"{LM_BASE} (") and paired(rbwa, runs):
                out.append(compare(f"Does rbwa reach a lower validation loss than {label}?", f"{label} - rbwa", rbwa,
                                   runs, "test_loss", show_curve=True))
            if paired(runs, base):
                out.append(compare(f"Does {label} reach a lower validation loss than adamw?", f"adamw - {label}",
                                   runs, base, "test_loss"))
        out += _lm_posthoc(exp, groups, setting)
    return out


def _lm_posthoc(exp: Experiment, groups: dict[tuple[str, str], list[Run]], setting: str) -> list[Finding | str]:
    from rbwa.analysis.posthoc import final_reestimated

    series = {s: v for s, v in _posthoc_series(exp, LM_BASE).items() if v[0].setting == setting}
    if len(series) < 2:
        return []
    where = "A GPT on text, constant-LR AdamW"
    out: list[Finding | str] = [
        f"{where}: every post-hoc candidate is a weighted mean of a run's snapshots, evaluated by its validation loss "
        "(no BatchNorm: nothing re-estimated) and chosen on the other seeds (a tie: the earliest SWA start, the "
        "shortest LAWA window or EMA half-life); the final weights are the last snapshot alone."]
    runs = [r for r, _ in series.values()]
    final = {s: float(final_reestimated(rows)["test_loss"]) for s, (_, rows) in series.items()}
    for family, name in POSTHOC_FAMILIES.items():
        held = choose_candidates(series, family, name, where, out, "test_loss")
        if held is None:
            continue
        for label, theirs, group in [("the same run's final weights", final, runs)] + [
                (other, _final_metric(groups.get((setting, other), []), "test_loss"), groups.get((setting, other), []))
                for other in (f"{LM_BASE} (cosine LR)", f"{LM_BASE} (wsd)", "rbwa")]:
            diffs = _difference(theirs, held)  # positive: the average's validation loss is the lower one
            if len(diffs) >= 2:
                what = f"{'final weights' if group is runs else label} - post-hoc {family}"
                out.append(Finding(f"{where}: does the best post-hoc {name}, chosen on the other seeds, reach a lower "
                                   f"validation loss than {label}?", what,
                                   diffs, {}, digits=4, unit="", key=("lm posthoc", setting, family, label),
                                   machines=machine_differences(runs, group), commits=commit_differences(runs, group)))
    return out


def claims(exp: Experiment, rows: list[dict[str, Any]]) -> list[Finding | str]:
    """The paper's claims that this experiment tests, as findings (and plain lines for claim 3b)."""
    if exp.name == "lm":
        return lm_claims(exp)
    groups = exp.groups()
    out: list[Finding | str] = []

    if exp.name in ("fig3", "fig5", "table1"):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            rbwa, sgd = groups.get((setting, "rbwa"), []), groups.get((setting, "sgd"), [])
            if not _paired(_measure(rbwa, "test_acc"), _measure(sgd, "test_acc")):
                continue
            gain = paper_gain(rows, setting)
            where = f"{dataset_name(_config(rbwa + sgd))}, {exp.setting} {setting}"
            out.append(compare(f"Claim 1, {where}: RBWA reaches higher final test accuracy than SGD",
                               "RBWA - SGD", rbwa, sgd, claimed=gain,
                               note=f"; paper: {'-' if gain is None else f'{gain:+.2f}'}"))
            out.append(compare(f"Claim 2, {where}: RBWA's final training loss is lower than SGD's",
                               "SGD - RBWA", rbwa, sgd, "train_loss"))
    if exp.name == "table1":
        out += batch_size_claims(groups)
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

