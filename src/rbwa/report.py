"""`rbwa report DIR`: run directories -> figures (PNG), results.csv and report.md with verdicts.

Reads only what `rbwa reproduce` wrote (the experiment manifests ``DIR/<experiment>.json`` and each run's
config.json, metrics.jsonl, summary.json); it never imports the trainer. Numbers are never typed in:
every table cell and verdict is computed from the runs, and the paper's numbers come from PAPER below.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbwa.config import PRESETS, TrainConfig
from rbwa.errors import UserError
from rbwa.io import atomic_write_bytes, read_jsonl
from rbwa.plots import plot_curves, plot_gain
from rbwa.stats import mean_std, paired_difference, verdict

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
ANCHOR_SOURCES = ("Anchors (test accuracy reported elsewhere, on all the data, for scale): (a) a tuned ResNet-18, "
                  "200 epochs, cosine LR, crop+flip; (b) timgaripov/swa, VGG-16, batch 128, augmentation, "
                  "1.5x budget.")
ORDER = ["fig3", "fig5", "table1", "variants", "controls"]  # the paper's order, then our controls
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
    cfg = _config(runs)
    if cfg is None or label not in ("sgd", "rbwa"):
        return None
    if exp.name == "table1":
        return TABLE1.get(int(setting), (None, None))[label == "rbwa"]
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


def _final(runs: list[Run], key: str) -> dict[int, float]:
    return {r.seed: r.summary[key] for r in runs if r.finished and r.summary.get(key) is not None}


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(lo):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def summarise(exp: Experiment) -> list[dict[str, Any]]:
    """One row per (setting, label): statistics over seeds and the paired difference to SGD."""
    groups = exp.groups()
    rows = []
    for (setting, label), runs in groups.items():
        acc, loss = _final(runs, "final_test_acc"), _final(runs, "final_train_loss")
        sgd = groups.get((setting, "sgd"), [])
        none = (math.nan, math.nan, math.nan, 0)
        diff = paired_difference(acc, _final(sgd, "final_test_acc")) if label != "sgd" else none
        loss_diff = paired_difference(_final(sgd, "final_train_loss"), loss) if label != "sgd" else none
        paper = paper_numbers(exp, setting, label, runs)
        row = {"experiment": exp.name, "setting": setting, "method": label, "n": len(acc),
               "diverged": sum(r.status == "diverged" for r in runs),
               "missing": sum(r.status in ("not run", "incomplete") for r in runs)}
        for name, key in (("final_acc", "final_test_acc"), ("best_acc", "best_test_acc"),
                          ("final_loss", "final_train_loss")):
            row[f"{name}_mean"], row[f"{name}_std"], _ = mean_std(list(_final(runs, key).values()))
        rows.append({
            **row,
            "diff_vs_sgd": diff[0], "diff_lo": diff[1], "diff_hi": diff[2], "pairs": diff[3],
            "loss_gain_vs_sgd": loss_diff[0], "loss_gain_lo": loss_diff[1], "loss_gain_hi": loss_diff[2],
            "paper_acc": None if paper is None else paper[0], "paper_loss": None if paper is None else paper[1],
            "anchor_acc": anchor(runs, label),
        })
    return rows


def claims(exp: Experiment, rows: list[dict[str, Any]]) -> list[str]:
    """Verdict lines for the paper's claims that this experiment tests."""
    by = {(r["setting"], r["method"]): r for r in rows}
    lines = []

    if exp.name in ("fig3", "fig5", "table1"):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            r = by.get((setting, "rbwa"))
            if r is None or r["pairs"] == 0:
                continue
            gain = paper_gain(rows, setting)
            lines.append(f"Claim 1, {exp.setting} {setting}: RBWA reaches higher final test accuracy than SGD: "
                         f"**{verdict(r['diff_lo'], r['diff_hi'], gain)}** (RBWA - SGD = "
                         f"{_fmt_ci(r['diff_vs_sgd'], r['diff_lo'], r['diff_hi'])} points, n = {r['pairs']} seeds; "
                         f"paper: {'-' if gain is None else f'{gain:+.2f}'}).")
            lines.append(f"Claim 2, {exp.setting} {setting}: RBWA's final training loss is lower than SGD's: "
                         f"**{verdict(r['loss_gain_lo'], r['loss_gain_hi'])}** (SGD - RBWA = "
                         f"{_fmt_ci(r['loss_gain_vs_sgd'], r['loss_gain_lo'], r['loss_gain_hi'], 4)}).")
    if exp.name == "table1":
        gains = defaultdict(dict)
        for (setting, label), runs in exp.groups().items():
            if label == "rbwa":
                sgd = _final(exp.groups().get((setting, "sgd"), []), "final_test_acc")
                for seed, acc in _final(runs, "final_test_acc").items():
                    if seed in sgd:
                        gains[seed][setting] = acc - sgd[seed]
        small = {s: sum(g[b] for b in SMALL_BATCHES) / len(SMALL_BATCHES) for s, g in gains.items()
                 if set(SMALL_BATCHES) <= set(g)}
        large = {s: sum(g[b] for b in LARGE_BATCHES) / len(LARGE_BATCHES) for s, g in gains.items()
                 if set(LARGE_BATCHES) <= set(g)}
        if small and large:
            m, lo, hi, n = paired_difference(small, large)
            paper = paper_batch_effect()
            lines.append("Claim 3: the gain is larger at batch sizes 16-64 than at 128-256: "
                         f"**{verdict(lo, hi, paper)}** (mean gain at 16-64 minus mean gain at 128-256 = "
                         f"{_fmt_ci(m, lo, hi)} points, n = {n}; paper: {paper:+.2f}).")
        rbwa_rows = [r for r in rows if r["method"] == "rbwa" and r["n"]]
        if len(rbwa_rows) == len(TABLE1):  # only once every batch size has runs
            top = max(rbwa_rows, key=lambda r: r["final_acc_mean"])
            others = ", ".join(f"{r['setting']}: {r['final_acc_mean']:.2f}%" for r in rbwa_rows if r is not top)
            spread = max(r["final_acc_std"] for r in rbwa_rows)
            lines.append(f"Claim 3b: the best batch size for RBWA is 32 (paper): ours is **{top['setting']}** "
                         f"({top['final_acc_mean']:.2f}% mean final test accuracy; {others}; the std over seeds "
                         f"is up to {spread:.2f} points).")
    if exp.name == "variants":
        for r in rows:
            if r["method"] == "sgd" or r["pairs"] == 0:
                continue
            lines.append(f"Does {r['method']} beat sgd? **{verdict(r['diff_lo'], r['diff_hi'])}** "
                         f"({r['method']} - sgd = {_fmt_ci(r['diff_vs_sgd'], r['diff_lo'], r['diff_hi'])} points, "
                         f"n = {r['pairs']}).")
            if r["method"].startswith("rbwa"):
                lines.append(f"Is {r['method']}'s final training loss lower than sgd's? "
                             f"**{verdict(r['loss_gain_lo'], r['loss_gain_hi'])}** (sgd - {r['method']} = "
                             f"{_fmt_ci(r['loss_gain_vs_sgd'], r['loss_gain_lo'], r['loss_gain_hi'], 4)}).")
    if exp.name == "controls":
        groups = exp.groups()
        for (setting, label), runs in groups.items():
            if not label.startswith("sgd ("):
                continue
            twin = "rbwa-e" if label.endswith("= rbwa-e)") else "rbwa"  # the other controls are for rbwa
            a, b = _final(groups.get((setting, twin), []), "final_test_acc"), _final(runs, "final_test_acc")
            m, lo, hi, n = paired_difference(a, b)
            if n == 0:
                continue
            lines.append(f"Does {twin} beat {label}? **{verdict(lo, hi)}** ({twin} - control = "
                         f"{_fmt_ci(m, lo, hi)} points, n = {n}).")
    return lines


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    out = [f"| {exp.setting} | method | n | final test acc (%) | best test acc (%) | final train loss | "
           "final acc - SGD, 95% CI | paper acc | paper loss | anchor acc | not finished |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        missing = []
        if r["diverged"]:
            missing.append(f"{r['diverged']} diverged")
        if r["missing"]:
            missing.append(f"{r['missing']} not run")
        out.append(
            f"| {r['setting']} | {r['method']} | {r['n']} | {_fmt(r['final_acc_mean'], r['final_acc_std'])} | "
            f"{_fmt(r['best_acc_mean'], r['best_acc_std'])} | {_fmt(r['final_loss_mean'], r['final_loss_std'], 4)} | "
            f"{_fmt_ci(r['diff_vs_sgd'], r['diff_lo'], r['diff_hi'])} | {_or_dash(r['paper_acc'])} | "
            f"{_or_dash(r['paper_loss'])} | {_or_dash(r['anchor_acc'])} | {', '.join(missing) or '-'} |")
    return "\n".join(out)


def _protocol(experiments: list[Experiment]) -> list[str]:
    runs = [r for e in experiments for r in e.runs if r.config and r.summary]
    if not runs:
        return ["No finished runs yet."]
    cfg, summary = runs[0].config, runs[0].summary
    v = summary.get("versions", {})
    commits = sorted({str(r.summary.get("versions", {}).get("git")) for r in runs})
    seconds = [r.summary.get("mean_epoch_seconds") for r in runs if r.summary.get("mean_epoch_seconds")]
    return [
        f"- Data: `{cfg['dataset']}`; training subset {cfg['train_subset'] or 'all'} images "
        f"(class-balanced, subset seed {cfg['subset_seed']}), test subset {cfg['test_subset'] or 'all'}; "
        f"augmentation: {cfg['augment']}.",
        f"- Models at width {cfg['width']}; {cfg['epochs']} epochs; averaging from epoch {cfg['start_epoch']}; "
        f"SGD lr {cfg['lr']}, momentum {cfg['momentum']}, weight decay {cfg['weight_decay']}, "
        f"LR schedule {cfg['lr_schedule']} unless the method label says otherwise; batch size {cfg['batch_size']} "
        "unless the table varies it.",
        f"- Machine: {v.get('platform')} ({v.get('machine')}), {v.get('torch_threads')} torch threads, device "
        f"{summary.get('device')}; torch {v.get('torch')}, numpy {v.get('numpy')}, Python {v.get('python')}, "
        f"rbwa {v.get('rbwa')} at git {', '.join(commits)}.",
        f"- Mean epoch time over {len(seconds)} runs: {sum(seconds) / max(1, len(seconds)):.1f} s.",
        "", "Differences from the paper's protocol (PAPER.md):", "", *_differences(cfg),
    ]


def folder_name(dataset: str) -> str | None:
    """The folder's name in an image-folder dataset as configs record it (``folder:NAME (...)``), else None."""
    return dataset[len("folder:"):].split(" (")[0].rstrip("/").rsplit("/", 1)[-1] if dataset.startswith("folder:") \
        else None


def _flag_value(value: Any) -> str:
    """A flag's value in a printed command; an image folder, recorded by content, as a path to fill in."""
    name = folder_name(value) if isinstance(value, str) else None
    return value if name is None else f"folder:PATH/TO/{name}"


def _differences(cfg: dict[str, Any]) -> list[str]:
    """What this sweep's config changes from the paper's stated protocol, and what it fills in."""
    paper = {**TrainConfig().to_dict(), **PRESETS["paper"]}
    named = {"epochs": "epochs", "start_epoch": "averaging start epoch", "width": "model width",
             "train_subset": "training images", "test_subset": "test images"}
    everything = {"train_subset": "all 50,000", "test_subset": "all 10,000"}
    lines = [f"- {label}: {cfg[key]} (class-balanced subset) instead of {everything[key]}" if key in everything
             else f"- {label}: {cfg[key]} instead of {paper[key]}"
             for key, label in named.items() if cfg.get(key) != paper[key]]
    if folder := folder_name(cfg["dataset"]):
        lines.append(f"- data: the image folder `{folder}` (JPEG re-encoded CIFAR, slightly below the official images "
                     "in accuracy) instead of the official archives")
    lines.append(f"- not stated by the paper, chosen here: SGD lr {cfg['lr']}, momentum {cfg['momentum']}, weight "
                 f"decay {cfg['weight_decay']}, constant LR, augmentation `{cfg['augment']}`, several seeds "
                 "(the paper's numbers look like single runs), training loss = mean over each epoch's batches")
    return lines


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    root = Path(runs_dir)
    out = Path(out_dir or root)
    experiments = load_experiments(root)
    all_rows = []
    md = ["# rbwa: reproduction report", "",
          "Generated by `rbwa report` from the run directories beside it; every number below is computed from "
          "them. Accuracy differences are paired by seed (same initial weights and batch order) with 95% "
          "t confidence intervals. Verdict rule: *supported* when the 95% CI of the difference lies above 0; "
          "*not supported* when it lies below 0, is exactly 0 (identical in every seed), or includes 0 but lies "
          "below the paper's own difference; "
          "*inconclusive at this scale* otherwise.", "", "## Protocol", "", *_protocol(experiments), ""]
    shown = root.name if root.is_absolute() else root  # no path of this machine in a report
    answers = []
    for exp in experiments:
        rows = summarise(exp)
        all_rows += rows
        overrides = exp.overrides
        if not overrides:  # a manifest from before they were recorded: the data location is in every config
            folders = sorted({r.config["dataset"] for r in exp.runs if r.config and ":" in r.config["dataset"]})
            overrides = {"dataset": folders[0]} if len(folders) == 1 else {}
        flags = "".join(f" --{k.replace('_', '-')} {_flag_value(v)}" for k, v in overrides.items())
        md += [f"## {exp.name}: {exp.title}", "", f"Preset `{exp.preset}`; command: "
               f"`rbwa reproduce {exp.name} --preset {exp.preset} --seeds "
               f"{max((r.seed for r in exp.runs), default=0) + 1} --out {shown}{flags}`", ""]
        by_setting: dict[str, dict[str, list[list[dict]]]] = defaultdict(dict)
        for (setting, label), runs in exp.groups().items():
            done = [r.metrics for r in runs if r.finished]
            if done:
                by_setting[setting][label] = done
        for setting, groups in by_setting.items():
            cfg = next(r.config for r in exp.runs if r.setting == setting and r.config)
            name = f"{exp.name}-{setting}.png".replace(" ", "_")
            plot_curves(groups, out / name, f"{exp.title} — {exp.setting} {setting}", start_epoch=cfg["start_epoch"])
            md += [f"![{exp.name} {setting}]({name})", ""]
        gains = [r for r in rows if r["method"] == "rbwa" and r["pairs"]] if exp.name == "table1" else []
        if gains:
            name = "table1-gain.png"
            plot_gain([(float(r["setting"]), r["diff_vs_sgd"], r["diff_lo"], r["diff_hi"],
                        paper_gain(rows, r["setting"])) for r in gains],
                      out / name, f"RBWA's gain over SGD by {exp.setting}", exp.setting)
            md += [f"![{exp.name} gain]({name})", ""]
        md += [_table(exp, rows), ""]
        if any(r["anchor_acc"] for r in rows):
            md += [ANCHOR_SOURCES, ""]
        verdicts = claims(exp, rows)
        answers += verdicts
        if verdicts:
            md += ["Verdicts:", "", *[f"- {v}" for v in verdicts], ""]
    answers = [f"- {a}" for a in answers] or ["- No verdicts yet: no finished pairs of runs."]
    absent = [name for name in ORDER if name not in {e.name for e in experiments}]
    if absent:  # say which of the paper's experiments this report cannot answer for
        answers.append(f"- Not in this directory, so not answered here: {', '.join(absent)} "
                       f"(run `rbwa reproduce {absent[0]} ...` with the same --out to add it).")
    md[md.index("## Protocol"):md.index("## Protocol")] = ["## Answers", "", *answers, ""]
    buf = io.StringIO()
    if all_rows:
        writer = csv.DictWriter(buf, fieldnames=list(all_rows[0]))
        writer.writeheader()
        writer.writerows(all_rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    return out / "report.md"
