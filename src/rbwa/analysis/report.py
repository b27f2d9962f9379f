"""`rbwa report DIR`: run directories -> figures (PNG), results.csv and report.md with verdicts.

The numbers and the claims come from :mod:`rbwa.analysis.findings`, the answers (numbered, Holm-adjusted) from
:mod:`rbwa.analysis.answers`; this module only lays them out. Numbers are never typed in: every table cell and verdict
is computed from the runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rbwa.analysis.answers import (
    cell,
    collect,
    detail_table,
    details,
    equivalences,
    forest,
    marks_legend,
    plural,
    sentence,
    table,
)
from rbwa.analysis.findings import claims
from rbwa.analysis.findings.core import (
    ITEM_TOLERANCE,
    LAST_EPOCHS,
    LOSS_TOLERANCE,
    ORDER,
    Experiment,
    Run,
    commit,
    folder_name,
    load_experiments,
    machine,
    measure,
    seeds_text,
)
from rbwa.analysis.findings.lm import LM_BASE
from rbwa.analysis.findings.posthoc import posthoc_methods
from rbwa.analysis.findings.summary import paper_gain, summarise
from rbwa.analysis.findings.tuned import lr_sweep
from rbwa.analysis.plots import plot_curves, plot_effective_lr, plot_gain, plot_lr_sweep
from rbwa.analysis.stats import mean_std
from rbwa.errors import UserError
from rbwa.experiments.grids import POSTHOC_LABELS
from rbwa.io import atomic_write_bytes
from rbwa.training.config import PRESETS, TrainConfig

ANCHOR_SOURCES = ("Anchors (test accuracy reported elsewhere, on all the data, for scale): (a) a tuned ResNet-18, "
                  "200 epochs, cosine LR, crop+flip; (b) timgaripov/swa, VGG-16, batch 128, augmentation, "
                  "1.5x budget.")


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(experiments: list[Experiment], rows: dict[int, list[dict[str, Any]]]) -> list[str]:
    """The image experiments' methods in one table: final and best test accuracy, final training loss, the paper's
    numbers and the anchors, each the mean ± sd over seeds."""
    out = ["| experiment | setting | method | n | final test acc (%) | best test acc (%) | final train loss | "
           "paper acc | paper loss | anchor acc | not finished |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for exp in experiments:
        for r in rows[id(exp)]:
            missing = [f"{r['diverged']} diverged"] * bool(r["diverged"]) + [f"{r['missing']} not run"] * bool(
                r["missing"])
            out.append(
                f"| {exp.name} | {exp.setting} {r['setting']} | {cell(r['method'])} | {r['n']} | "
                f"{_fmt(r['final_acc_mean'], r['final_acc_std'])} | {_fmt(r['best_acc_mean'], r['best_acc_std'])} | "
                f"{_fmt(r['final_loss_mean'], r['final_loss_std'], 4)} | {_or_dash(r['paper_acc'])} | "
                f"{_or_dash(r['paper_loss'])} | {_or_dash(r['anchor_acc'])} | {', '.join(missing) or '-'} |")
        for setting, label, values in posthoc_methods(exp, list(POSTHOC_LABELS.values())):
            mean, std, n = mean_std(list(values.values()))
            out.append(f"| {exp.name} | {exp.setting} {setting} | {cell(label)} | {n} | {_fmt(mean, std)} |"
                       + " - |" * 6)
    return out


def _lm_table(experiments: list[Experiment]) -> list[str]:
    """The language models' methods in one table: validation loss (nats and bits per character), training loss,
    next-character accuracy, each the mean ± sd over seeds of the final epoch."""
    out = ["| experiment | setting | method | n | final val loss (nats/char) | final val bits/char | final train "
           "loss | final next-char acc (%) | not finished |", "|---|---|---|---|---|---|---|---|---|"]
    for exp in experiments:
        for (setting, label), runs in exp.groups().items():
            stats = {m: mean_std(list(measure(runs, m).values())) for m in ("test_loss", "test_bpc", "train_loss",
                                                                            "test_acc")}
            missing = sum(r.status != "finished" for r in runs)
            out.append(f"| {exp.name} | {exp.setting} {setting} | {cell(label)} | {stats['test_loss'][2]} | "
                       f"{_fmt(*stats['test_loss'][:2], 4)} | {_fmt(*stats['test_bpc'][:2], 4)} | "
                       f"{_fmt(*stats['train_loss'][:2], 4)} | {_fmt(*stats['test_acc'][:2])} | {missing or '-'} |")
        for setting, label, values in posthoc_methods(exp, [LM_BASE], "test_loss"):
            mean, std, n = mean_std(list(values.values()))
            out.append(f"| {exp.name} | {exp.setting} {setting} | {cell(label)} | {n} | {_fmt(mean, std, 4)} |"
                       + " - |" * 4)
    return out


def _bn_note(experiments: list[Experiment]) -> list[str]:
    """Which methods' evaluations re-estimate BatchNorm's statistics (the trainer's own rule), if any do."""
    from rbwa.training.methods import reestimates_bn

    named = list(dict.fromkeys(
        label for exp in experiments for (_, label), runs in exp.groups().items()
        if (cfg := next((r.config for r in runs if r.config), None))
        and reestimates_bn(cfg.get("method", ""), cfg.get("write_back", 1))))
    if not named:
        return []
    return [f"BatchNorm: before each evaluation of {', '.join(named)}, the running statistics are re-estimated on "
            "the training data, because the weights evaluated are not the ones they were gathered with; every "
            "other method is evaluated with the statistics gathered in training.", ""]


def shared_runs(exp: Experiment, experiments: list[Experiment]) -> list[str]:
    """Lines naming the settings of ``exp`` whose runs belong to an experiment listed before it (table1's batch 64
    is fig3's ResNet-18), for a reader comparing across settings."""
    earlier = experiments[:experiments.index(exp)]
    lines = []
    for setting in dict.fromkeys(r.setting for r in exp.runs):
        paths = {r.path for r in exp.runs if r.setting == setting}
        other = next((o for o in earlier if paths <= {r.path for r in o.runs}), None)
        if other is not None:
            lines.append(f"The runs of {exp.setting} {setting} are {other.name}'s (the same run directories).")
    return [*lines, ""] if lines else []


def provenance_table(experiments: list[Experiment]) -> list[str]:
    """Where each group of runs was trained, once: its commits, CPU kinds and torch thread counts, each with the
    seeds that used it where the seeds differ, so that any pair's difference can be looked up."""
    out = ["| experiment | setting | method | finished runs | git | CPU kind | torch threads |",
           "|---|---|---|---|---|---|---|"]
    for exp in experiments:
        for (setting, label), runs in exp.groups().items():
            done = [r for r in runs if r.finished]
            if done:
                kind = _per_seed(done, lambda r: machine(r)[0] or "not recorded")
                out.append(f"| {exp.name} | {setting} | {cell(label)} | {len(done)} | {_per_seed(done, commit)} | "
                           f"{kind} | {_per_seed(done, lambda r: machine(r)[1])} |")
    return out


def _per_seed(runs: list[Run], value: Callable[[Run], Any]) -> str:
    """One value where every run has it; else each value with the seeds that have it, in seed order."""
    by: dict[str, list[int]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        by.setdefault(str(value(r)), []).append(r.seed)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{v} ({seeds_text(seeds)})" for v, seeds in by.items())


def _protocol(experiments: list[Experiment]) -> list[str]:
    # each run once, though experiments may share it
    runs = list({r.path: r for e in experiments for r in e.runs if r.config and r.summary}.values())
    if not runs:
        return ["No finished runs yet."]
    cfg = runs[0].config

    def v(key: str) -> str:
        return _spread([r.summary.get("versions", {}).get(key) for r in runs])

    seconds = [r.summary.get("mean_epoch_seconds") for r in runs if r.summary.get("mean_epoch_seconds")]
    machine_lines = [
        f"- Machine: {v('platform')} ({v('machine')}), torch threads per run {v('torch_threads')}, device "
        f"{_spread([r.summary.get('device') for r in runs])}; torch {v('torch')}, numpy {v('numpy')}, "
        f"Python {v('python')}, rbwa {v('rbwa')}; the commits and CPU kinds of each group of runs are in the "
        "provenance table below.",
        f"- Mean epoch time over {len(seconds)} runs: {sum(seconds) / max(1, len(seconds)):.1f} s."]
    if all(r.config.get("model") == "gpt" for r in runs):  # a language model: the paper has no such experiment
        return [
            f"- Data: `{cfg['dataset']}`, characters, the first 90% to train and the last 10% to validate, in "
            f"windows of {cfg['context']} characters.",
            f"- A GPT of {cfg['layers']} layers, {cfg['heads']} heads and width {cfg['embedding']} (dropout "
            f"{cfg['dropout']}, weights in {cfg.get('param_dtype', 'float32')}); {cfg['epochs']} epochs; averaging "
            f"from epoch {cfg['start_epoch']}; {cfg['optimizer']} lr {cfg['lr']}, betas ({cfg['adam_beta1']}, "
            f"{cfg['adam_beta2']}), weight decay {cfg['weight_decay']} on weight matrices, {cfg['warmup_steps']} "
            f"warmup steps, LR schedule {cfg['lr_schedule']} unless the method label says otherwise; batch size "
            f"{cfg['batch_size']} windows.",
            *machine_lines, "",
            "The paper has no language model: this puts its claims to one (claim 1 by the validation loss, claim 2 "
            "by the training loss).",
        ]
    return [
        f"- Data: `{cfg['dataset']}`; training subset {cfg['train_subset'] or 'all'} images "
        f"(class-balanced, subset seed {cfg['subset_seed']}), test subset {cfg['test_subset'] or 'all'}; "
        f"augmentation: {cfg['augment']}.",
        f"- Models at width {cfg['width']}; {cfg['epochs']} epochs; averaging from epoch {cfg['start_epoch']}; "
        f"SGD lr {cfg['lr']}, momentum {cfg['momentum']}, weight decay {cfg['weight_decay']}, "
        f"LR schedule {cfg['lr_schedule']} unless the method label says otherwise; batch size {cfg['batch_size']} "
        "unless the table varies it.",
        *machine_lines, "", "Differences from the paper's protocol (PAPER.md):", "", *_differences(cfg),
    ]


def _spread(values: list[Any]) -> str:
    """One value as it is; several as each value with its number of runs, most common first."""
    counts = Counter(values).most_common()
    if len(counts) == 1:
        return str(counts[0][0])
    return ", ".join(f"{value} in {n} run{'s' * (n > 1)}" for value, n in counts)


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


def _multipliers(spe: int, cfg: dict[str, Any], counter: str) -> np.ndarray:
    """RBWA's LR factor at every step of a run with ``spe`` steps an epoch, from the wrapper's own fold rule."""
    import torch

    from rbwa.averaging import RBWA

    opt = RBWA(torch.optim.SGD([torch.zeros(1)], lr=cfg["lr"]), start_step=cfg["start_epoch"] * spe,
               counter=counter, steps_per_epoch=spe)
    return np.array(opt.lr_multipliers(cfg["epochs"] * spe))


def mechanism(experiments: list[Experiment], out: Path) -> list[str]:
    """A figure of RBWA's effective learning rate at this sweep's batches per epoch and, for images, at the other
    preset's (the cpu preset's 5,000 images, or all 50,000)."""
    run = next((r for e in experiments for r in e.runs if r.finished and r.config and r.summary.get("steps_per_epoch")
                and r.config.get("method") == "rbwa" and r.config.get("counter", "folds") == "folds"), None)
    if run is None:
        return []
    cfg, spe = run.config, run.summary["steps_per_epoch"]
    text = cfg.get("model") == "gpt"  # no other preset of the same text to compare with
    subset = PRESETS["cpu"]["train_subset"]
    small = -(-subset // cfg["batch_size"])  # the cpu preset's epoch: 5,000 images
    other = small if spe != small else -(-50_000 // cfg["batch_size"])
    shown = [(f"RBWA (Eq. 2), {spe} batches an epoch (this sweep)", spe, "folds")]
    if not text:
        shown.append((f"RBWA (Eq. 2), {other} batches an epoch", other, "folds"))
    shown.append((f"RBWA, epoch counter, {spe} batches an epoch", spe, "epochs"))
    series = {}
    for label, n, counter in shown:
        lr = cfg["lr"] * _multipliers(n, cfg, counter)
        series[label] = (np.arange(len(lr)) / n, lr)
    base = {"sgd": "SGD", "adamw": "AdamW"}[cfg.get("optimizer", "sgd")]
    series[f"{base}, constant learning rate"] = (np.array([0.0, cfg["epochs"]]), np.array([cfg["lr"]] * 2))
    plot_effective_lr(series, out / "effective-lr.png", "What RBWA does to the step size", cfg["start_epoch"])
    after = {n: cfg["lr"] / (n + 1) for n in (spe, other)}  # the step that ends the first averaging epoch
    at = (f"lr/{spe + 1} = {after[spe]:.2g} at its {spe} batches an epoch" if text else
          f"lr/{spe + 1} = {after[spe]:.2g} at {spe} batches an epoch and lr/{other + 1} = {after[other]:.2g} at "
          f"{other}")
    return ["### Why: RBWA's effective learning rate", "",
            "![effective learning rate](effective-lr.png)", "",
            f"Drawn from the wrapper's own fold rule (`RBWA.lr_multipliers`) with this sweep's lr {cfg['lr']}, "
            f"{cfg['epochs']} epochs and start epoch {cfg['start_epoch']}. Because each step starts from the "
            f"average, RBWA is its base optimizer ({base}) with the learning rate times the fold weight 1/(k+1). The "
            f"counter counts batches, so one epoch after the start the step is {at}; the epoch counter's is lr/2.",
            ""]


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """The report of a sweep's directory: the answers first (sentences, a forest figure, a table), then the methods'
    tables, the figures, how to read it, how the runs were made and where, and the details per experiment."""
    root = Path(runs_dir)
    out = Path(out_dir or root)
    if file := next((d for d in (out, *out.parents) if d.exists() and not d.is_dir()), None):
        raise UserError(f"{file} is a file; give --out a directory for the report")
    experiments = load_experiments(root)
    shown = root.name if root.is_absolute() else root  # no path of this machine in a report
    rows = {id(exp): summarise(exp) for exp in experiments}
    answers = collect([(exp, claims(exp, rows[id(exp)], experiments)) for exp in experiments])
    md = ["# rbwa: reproduction report", "",
          "Generated by `rbwa report` from the run directories beside it; every number below is computed from them. "
          "[How to read it](#how-to-read): differences are paired by seed, with 95% intervals; the verdicts are "
          "after Holm's correction over the report's tests.", "", "## Answers", ""]
    md += [sentence(exp, answers) for exp in experiments]
    absent = [name for name in ORDER if name not in {e.name for e in experiments}]
    if absent and any(e.name in ORDER for e in experiments):  # which of the paper's experiments this cannot answer
        md.append(f"- Not in this directory, so not answered here: {', '.join(absent)} "
                  f"(run `rbwa reproduce {absent[0]} ...` with the same --out to add it).")
    md.append("")
    if forest(answers, out / "answers.png"):
        md += ["![every answer's paired difference with its 95% interval](answers.png)", ""]
    if answers.rows:
        md += [f"Effects are signed so that a positive one supports the question (for a loss: the other's loss minus "
               f"this one's, lower is better); p: Holm-adjusted over the {plural(answers.tests, 'test')} of this "
               "report.", "",
               *table(answers), ""]
    for lines in (equivalences(answers), marks_legend(answers)):
        md += [*lines, ""] if lines else []
    images, texts = [e for e in experiments if not e.text], [e for e in experiments if e.text]
    md += ["## Methods", "", "Mean ± sd over seeds of each method's final epoch.", ""]
    md += [*_table(images, rows), "", *_bn_note(images)] if images else []
    md += [*_lm_table(texts), ""] if texts else []  # a GPT: no BatchNorm
    md += [line for exp in experiments for line in shared_runs(exp, experiments)]
    if any(r["anchor_acc"] for exp_rows in rows.values() for r in exp_rows):
        md += [ANCHOR_SOURCES, ""]
    md += ["## Figures", "", *mechanism(experiments, out)]
    for exp in experiments:
        figures = _figures(exp, rows[id(exp)], root, out)
        md += [f"### {exp.name}", "", *figures] if figures else []
    md += ["## How to read", "", *_preamble(), "", "## How the runs were made", "", *_protocol(experiments), "",
           "Each experiment's command (from the repository root):", "", "| experiment | command |", "|---|---|",
           *(f"| {exp.name} | `{_command(exp, shown)}` |" for exp in experiments), "",
           "Provenance: where each group of runs was trained.", "", *provenance_table(experiments), "",
           "## Appendix: details", "",
           "Per answer, what the table leaves out: the verdict of the uncorrected 95% interval on the final epoch, "
           f"the mean of the last {LAST_EPOCHS} epochs as a second measure, and the seeds behind a mark; then the "
           "choices made per seed.", ""]
    md += [*detail_table(answers), ""]
    for exp, items in answers.sections:
        lines = details(exp, answers, items)
        md += [f"### {exp.name}", "", *lines, ""] if lines else []
    buf = io.StringIO()
    all_rows = [r for exp in experiments for r in rows[id(exp)]]
    if all_rows:
        writer = csv.DictWriter(buf, fieldnames=list(all_rows[0]))
        writer.writeheader()
        writer.writerows(all_rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "report.md", ("\n".join(md).rstrip("\n") + "\n").encode())
    return out / "report.md"


def _preamble() -> list[str]:
    """How to read a report: the pairing, the intervals, the verdict rule, Holm's correction and the identities."""
    return ["Differences are paired by seed (same initial weights and batch order) with 95% t confidence intervals. "
            "Verdict rule: *supported* when the 95% CI of the difference lies above 0; *not supported* when it lies "
            "below 0, or includes 0 but lies below the paper's own difference, or when the two curves agree within a "
            "tolerance at every epoch of every seed (*no difference*: accuracies at most one test image apart, "
            f"losses at most {LOSS_TOLERANCE:g} apart); *inconclusive at this scale* otherwise. The answers table "
            "gives the verdict after Holm's correction over the report's final-epoch t-tests (two-sided, "
            "family-wise error 5%; a comparison of the same runs that two experiments share is one test, one row). "
            "The appendix gives, per row, the uncorrected verdict on the final epoch (the paper's measure) and on the "
            f"mean of the last {LAST_EPOCHS} epochs, and whether the two agree; neither is corrected. Where the groups "
            "compared are independent runs rather than pairs (claim 3's batch sizes), the interval and test are "
            "Welch's. An identity (a method against the schedule it equals) is not a test: it is the largest gap "
            "between the two runs at any epoch of any seed, in test items predicted correctly (images, or "
            f"characters of the validation split), against a tolerance of 1 in {1 / ITEM_TOLERANCE:,.0f} items "
            "(at least one). Seeds whose two runs recorded different CPU kinds or thread counts (†), whose float "
            "rounding differs, or commits (‡) are marked."]


def _command(exp: Experiment, shown: str | Path) -> str:
    """The command that reproduces an experiment's runs."""
    overrides = exp.overrides
    if not overrides:  # a manifest from before they were recorded: the data location is in every config
        folders = sorted({r.config["dataset"] for r in exp.runs if r.config and ":" in r.config["dataset"]})
        overrides = {"dataset": folders[0]} if len(folders) == 1 else {}
    flags = "".join(f" --{k.replace('_', '-')} {_flag_value(v)}" for k, v in overrides.items())
    seeds = max((r.seed for r in exp.runs), default=0) + 1
    return f"rbwa reproduce {exp.name} --preset {exp.preset} --seeds {seeds} --out {shown}{flags}"


def _figures(exp: Experiment, rows: list[dict[str, Any]], root: Path, out: Path) -> list[str]:
    """The curves of each setting (and table1's gain by batch size), written to ``out``, and the post-hoc figures
    `rbwa posthoc` wrote, as markdown lines."""
    md = []
    by_setting: dict[str, dict[str, list[list[dict]]]] = defaultdict(dict)
    for (setting, label), runs in exp.groups().items():
        done = [r.metrics for r in runs if r.finished]
        if done:
            by_setting[setting][label] = done
    if exp.name == "lm-tuned":  # 14 curves a seed say less than what the choice picked from: loss by peak LR
        sweep = lr_sweep(exp)
        if sweep:
            plot_lr_sweep(sweep, out / "lm-tuned-lr.png", "Final validation loss by peak learning rate")
            md += ["![lm-tuned: final validation loss by peak learning rate](lm-tuned-lr.png)", "",
                   "Mean over the seeds that hold a method's whole grid (the legend counts them), bars from the "
                   "lowest seed to the highest, an x where a seed diverged (left out of the mean); an average (and "
                   "WSM) at each rate is the candidate chosen among that rate's on the other seeds; a setting run "
                   "at one rate is a point.", ""]
        by_setting.clear()
    for setting, groups in by_setting.items():
        cfg = next(r.config for r in exp.runs if r.setting == setting and r.config)
        name = f"{exp.name}-{setting}.png".replace(" ", "_")
        plot_curves(groups, out / name, f"{exp.title} — {exp.setting} {setting}", start_epoch=cfg["start_epoch"],
                    metric="test_loss" if exp.text else "test_acc")
        md += [f"![{exp.name} {setting}]({name})", ""]
    gains = [r for r in rows if r["method"] == "rbwa" and r["pairs"]] if exp.name == "table1" else []
    if gains:
        name = "table1-gain.png"
        plot_gain([(float(r["setting"]), r["diff_vs_sgd"], r["diff_lo"], r["diff_hi"],
                    paper_gain(rows, r["setting"])) for r in gains],
                  out / name, f"RBWA's gain over SGD by {exp.setting}", exp.setting)
        md += [f"![{exp.name} gain]({name})", ""]
    if exp.name.startswith("posthoc"):
        md += [f"![{r.path.name}]({r.path.relative_to(root)}/posthoc/posthoc.png)" for r in exp.runs
               if (r.path / "posthoc" / "posthoc.png").exists()] + [""]
    return md
