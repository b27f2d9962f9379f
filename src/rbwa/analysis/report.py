"""`rbwa report DIR`: run directories -> figures (PNG), results.csv and report.md with verdicts.

The numbers and the claims come from :mod:`rbwa.analysis.findings`; this module only renders them. Numbers are
never typed in: every table cell and verdict is computed from the runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rbwa.analysis.findings import claims
from rbwa.analysis.findings.core import (
    LAST_EPOCHS,
    LOSS_TOLERANCE,
    ORDER,
    Experiment,
    Finding,
    folder_name,
    load_experiments,
    measure,
    provenance,
)
from rbwa.analysis.findings.summary import paper_gain, summarise
from rbwa.analysis.plots import plot_curves, plot_effective_lr, plot_gain
from rbwa.analysis.stats import category, holm, holm_verdict, mean_std
from rbwa.io import atomic_write_bytes
from rbwa.training.config import PRESETS, TrainConfig

ANCHOR_SOURCES = ("Anchors (test accuracy reported elsewhere, on all the data, for scale): (a) a tuned ResNet-18, "
                  "200 epochs, cosine LR, crop+flip; (b) timgaripov/swa, VGG-16, batch 128, augmentation, "
                  "1.5x budget.")


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


def render(f: Finding, p_adjusted: float, tests: int) -> str:
    """One verdict line: both measures, whether they agree, the Holm-adjusted verdict, the curve's largest gap."""
    mean, lo, hi, n = f.stats("final")
    v = f.verdict("final")
    if f.last or f.arms is not None:
        mean5, lo5, hi5, _ = f.stats("last")
        v5 = f.verdict("last")
        agree = "the two measures agree" if category(v) == category(v5) else "**the two measures disagree**"
        second = f"mean of the last {LAST_EPOCHS} epochs: **{v5}** ({_fmt_ci(mean5, lo5, hi5, f.digits)}); {agree}"
    else:  # an average chosen after training exists at the end of training only
        second = "one measure only (the end of training)"
    p = "-" if math.isnan(p_adjusted) else f"{p_adjusted:.3g}"
    head = f"{f.claim}{' ' if f.claim.endswith('?') else ': '}**{v}**"
    seeds = "1 seed" if n == 1 else f"{n} seeds"
    line = (f"{head} ({f.what} = {_fmt_ci(mean, lo, hi, f.digits)}{f.unit}, n = {seeds}{f.note}); {second}; "
            f"after Holm's correction over the {tests} final-epoch tests of this report: p = {p}, "
            f"**{holm_verdict(mean, p_adjusted, f.same, n=n)}**")
    if f.curve and (f.show_curve or f.same):
        line += (f"; largest difference at any epoch of any seed: {max(abs(d) for d in f.curve):.{f.digits}g}"
                 f"{f.unit} (tolerance {f.tolerance:.{f.digits}g}{f.unit})")
    if f.machines:
        by_how: dict[str, list[int]] = {}
        for seed, how in sorted(f.machines.items()):
            by_how.setdefault(how, []).append(seed)
        seeds = "; ".join(f"{how} in seed{'s' * (len(s) > 1)} {', '.join(map(str, s))}" for how, s in by_how.items())
        which = "that seed's difference" if len(f.machines) == 1 else "those seeds' differences"
        line += f"; the paired runs ran with {seeds}, so float rounding adds to {which}"
    if f.commits:
        by_commit: dict[str, list[int]] = {}
        for seed, how in sorted(f.commits.items()):
            by_commit.setdefault(how, []).append(seed)
        line += "; the paired runs were trained at different commits (" + "; ".join(
            f"git {how} in seed{'s' * (len(s) > 1)} {', '.join(map(str, s))}" for how, s in by_commit.items()) + ")"
    return line + "."


def _test(f: Finding) -> tuple | int:
    """What a finding tests, for Holm's family: its metric and runs, or the finding itself where it has no key."""
    return f.key or id(f)


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    out = [f"| {exp.setting} | method | n | final test acc (%) | best test acc (%) | final train loss | "
           f"final acc - SGD, 95% CI | last-{LAST_EPOCHS}-epoch acc - SGD | paper acc | paper loss | anchor acc | "
           "not finished |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        missing = []
        if r["diverged"]:
            missing.append(f"{r['diverged']} diverged")
        if r["missing"]:
            missing.append(f"{r['missing']} not run")
        out.append(
            f"| {r['setting']} | {r['method']} | {r['n']} | {_fmt(r['final_acc_mean'], r['final_acc_std'])} | "
            f"{_fmt(r['best_acc_mean'], r['best_acc_std'])} | {_fmt(r['final_loss_mean'], r['final_loss_std'], 4)} | "
            f"{_fmt_ci(r['diff_vs_sgd'], r['diff_lo'], r['diff_hi'])} | "
            f"{_fmt_ci(r['last5_diff_vs_sgd'], r['last5_diff_lo'], r['last5_diff_hi'])} | {_or_dash(r['paper_acc'])} | "
            f"{_or_dash(r['paper_loss'])} | {_or_dash(r['anchor_acc'])} | {', '.join(missing) or '-'} |")
    return "\n".join(out)


def _lm_table(exp: Experiment) -> str:
    """A language model's table: validation loss (nats and bits per character), training loss, next-character
    accuracy, each the mean ± std over seeds of the final epoch."""
    out = [f"| {exp.setting} | method | n | final val loss (nats/char) | final val bits/char | final train loss | "
           "final next-char acc (%) | not finished |", "|---|---|---|---|---|---|---|---|"]
    for (setting, label), runs in exp.groups().items():
        stats = {m: mean_std(list(measure(runs, m).values())) for m in ("test_loss", "test_bpc", "train_loss",
                                                                        "test_acc")}
        missing = sum(r.status != "finished" for r in runs)
        out.append(f"| {setting} | {label} | {stats['test_loss'][2]} | {_fmt(*stats['test_loss'][:2], 4)} | "
                   f"{_fmt(*stats['test_bpc'][:2], 4)} | {_fmt(*stats['train_loss'][:2], 4)} | "
                   f"{_fmt(*stats['test_acc'][:2])} | {missing or '-'} |")
    return "\n".join(out)


def _bn_note(exp: Experiment) -> list[str]:
    """Which methods' evaluations re-estimate BatchNorm's statistics (the trainer's own rule), if any do."""
    from rbwa.training.methods import reestimates_bn

    cfgs = {label: next((r.config for r in runs if r.config), None) for (_, label), runs in exp.groups().items()}
    named = [label for label, cfg in cfgs.items()
             if cfg and reestimates_bn(cfg.get("method", ""), cfg.get("write_back", 1))]
    if not named:
        return []
    return [f"BatchNorm: before each evaluation of {', '.join(named)}, the running statistics are re-estimated on "
            "the training data, because the weights evaluated are not the ones they were gathered with; every "
            "other method is evaluated with the statistics gathered in training.", ""]


def shared_runs(exp: Experiment, experiments: list[Experiment]) -> list[str]:
    """Lines naming the settings of ``exp`` whose runs belong to an experiment listed before it (table1's batch 64
    is fig3's ResNet-18), with where those runs were trained, for a reader comparing across settings."""
    earlier = experiments[:experiments.index(exp)]
    lines = []
    for setting in dict.fromkeys(r.setting for r in exp.runs):
        runs = [r for r in exp.runs if r.setting == setting]
        for other in earlier:
            if {r.path for r in runs} <= {r.path for r in other.runs}:
                rest = [r for r in exp.runs if r.setting != setting]
                lines.append(f"The runs of {exp.setting} {setting} are {other.name}'s (the same run directories), "
                             f"trained at {provenance(runs)}; the other settings' at {provenance(rest)}.")
                break
    return [*lines, ""] if lines else []


def _protocol(experiments: list[Experiment]) -> list[str]:
    # each run once, though experiments may share it
    runs = list({r.path: r for e in experiments for r in e.runs if r.config and r.summary}.values())
    if not runs:
        return ["No finished runs yet."]
    cfg = runs[0].config

    def v(key: str) -> str:
        return _spread([r.summary.get("versions", {}).get(key) for r in runs])

    commits = sorted({str(r.summary.get("versions", {}).get("git")) for r in runs})
    cpus = [r.summary.get("versions", {}).get("cpu") or "not recorded" for r in runs]  # older runs recorded none
    cpu = f", CPU {_spread(cpus)}" if set(cpus) != {"not recorded"} else ""
    seconds = [r.summary.get("mean_epoch_seconds") for r in runs if r.summary.get("mean_epoch_seconds")]
    machine_lines = [
        f"- Machine: {v('platform')} ({v('machine')}){cpu}, torch threads per run {v('torch_threads')}, device "
        f"{_spread([r.summary.get('device') for r in runs])}; torch {v('torch')}, numpy {v('numpy')}, "
        f"Python {v('python')}, rbwa {v('rbwa')}; git {', '.join(commits)}.",
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
    return ["## Why: RBWA's effective learning rate", "",
            "![effective learning rate](effective-lr.png)", "",
            f"Drawn from the wrapper's own fold rule (`RBWA.lr_multipliers`) with this sweep's lr {cfg['lr']}, "
            f"{cfg['epochs']} epochs and start epoch {cfg['start_epoch']}. Because each step starts from the "
            f"average, RBWA is its base optimizer ({base}) with the learning rate times the fold weight 1/(k+1). The "
            f"counter counts batches, so one epoch after the start the step is {at}; the epoch counter's is lr/2.",
            ""]


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    root = Path(runs_dir)
    out = Path(out_dir or root)
    experiments = load_experiments(root)
    all_rows = []
    md = [*_preamble(), "", "## Protocol", "", *_protocol(experiments), ""]
    shown = root.name if root.is_absolute() else root  # no path of this machine in a report
    sections: list[tuple[int, list[Finding | str]]] = []  # where each experiment's verdicts go in md
    for exp in experiments:
        rows = summarise(exp)
        all_rows += rows
        md += _section(exp, experiments, rows, root, out, shown)
        sections.append((len(md), claims(exp, rows, experiments)))
    answers = _with_verdicts(md, sections)
    absent = [name for name in ORDER if name not in {e.name for e in experiments}]
    if absent and any(e.name in ORDER for e in experiments):  # which of the paper's experiments this cannot answer
        answers.append(f"- Not in this directory, so not answered here: {', '.join(absent)} "
                       f"(run `rbwa reproduce {absent[0]} ...` with the same --out to add it).")
    md[md.index("## Protocol"):md.index("## Protocol")] = ["## Answers", "", *answers, "",
                                                           *mechanism(experiments, out)]
    buf = io.StringIO()
    if all_rows:
        writer = csv.DictWriter(buf, fieldnames=list(all_rows[0]))
        writer.writeheader()
        writer.writerows(all_rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    return out / "report.md"


def _preamble() -> list[str]:
    """The report's title and how to read it: the pairing, the intervals, the verdict rule and Holm's correction."""
    return ["# rbwa: reproduction report", "",
            "Generated by `rbwa report` from the run directories beside it; every number below is computed from "
            "them. Differences are paired by seed (same initial weights and batch order) with 95% "
            "t confidence intervals; a verdict names the seeds whose two runs recorded a different CPU kind or "
            "torch thread count, whose float rounding differs too. Verdict rule: *supported* when the 95% CI of "
            "the difference lies above 0; "
            "*not supported* when it lies below 0, or includes 0 but lies below the paper's own difference, or "
            "when the two curves agree within a tolerance at every epoch of every seed (*no difference*: "
            f"accuracies at most one test image apart, training losses at most {LOSS_TOLERANCE:g} apart); "
            "*inconclusive at this scale* otherwise. Every verdict is given twice: on the final epoch (the paper's "
            f"measure) and on the mean of the last {LAST_EPOCHS} epochs, with whether the two agree; both come from "
            "uncorrected 95% intervals. Beside them stands the verdict after Holm's correction, which covers the "
            "final-epoch t-tests only: one per distinct comparison in this report (two-sided, family-wise error 5%; "
            "a comparison of the same runs that two experiments share is one test, shown under each). The "
            f"last-{LAST_EPOCHS}-epoch verdicts and 'lies below the paper's difference' are not corrected. Where the "
            "groups compared are independent runs rather than pairs (claim 3's batch sizes), the interval and test "
            "are Welch's."]


def _section(exp: Experiment, experiments: list[Experiment], rows: list[dict[str, Any]], root: Path, out: Path,
             shown: str | Path) -> list[str]:
    """One experiment's section (its verdicts are inserted after it): the command that reproduces it, its figures
    (written to ``out``), its table, and the runs it shares with an experiment before it."""
    overrides = exp.overrides
    if not overrides:  # a manifest from before they were recorded: the data location is in every config
        folders = sorted({r.config["dataset"] for r in exp.runs if r.config and ":" in r.config["dataset"]})
        overrides = {"dataset": folders[0]} if len(folders) == 1 else {}
    flags = "".join(f" --{k.replace('_', '-')} {_flag_value(v)}" for k, v in overrides.items())
    md = [f"## {exp.name}: {exp.title}", "", f"Preset `{exp.preset}`; command: "
          f"`rbwa reproduce {exp.name} --preset {exp.preset} --seeds "
          f"{max((r.seed for r in exp.runs), default=0) + 1} --out {shown}{flags}`", ""]
    md += _figures(exp, rows, out)
    md += [_lm_table(exp), ""] if exp.text else [_table(exp, rows), "", *_bn_note(exp)]  # a GPT: no BN
    if any(r["anchor_acc"] for r in rows):
        md += [ANCHOR_SOURCES, ""]
    if exp.name.startswith("posthoc"):
        md += [f"![{r.path.name}]({r.path.relative_to(root)}/posthoc/posthoc.png)" for r in exp.runs
               if (r.path / "posthoc" / "posthoc.png").exists()] + [""]
    return md + shared_runs(exp, experiments)


def _figures(exp: Experiment, rows: list[dict[str, Any]], out: Path) -> list[str]:
    """The curves of each setting (and table1's gain by batch size), written to ``out``, as markdown lines."""
    md = []
    by_setting: dict[str, dict[str, list[list[dict]]]] = defaultdict(dict)
    for (setting, label), runs in exp.groups().items():
        done = [r.metrics for r in runs if r.finished]
        if done:
            by_setting[setting][label] = done
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
    return md


def _with_verdicts(md: list[str], sections: list[tuple[int, list[Finding | str]]]) -> list[str]:
    """Insert each experiment's verdicts into ``md`` where its section ends (``sections``: that place and its
    findings), Holm's correction over every distinct final-epoch test; returns them all, for the answers."""
    # one test per distinct comparison: a comparison two experiments share (the same runs) is counted once
    distinct = {_test(f): f for _, items in sections for f in items if isinstance(f, Finding)}
    adjusted = dict(zip(distinct, holm([f.p for f in distinct.values()])))
    tests = sum(not math.isnan(p) for p in adjusted.values())

    def line(item: Finding | str) -> str:
        return f"- {item if isinstance(item, str) else render(item, adjusted[_test(item)], tests)}"

    answers = [line(item) for _, items in sections for item in items]
    for at, items in reversed(sections):
        if items:
            md[at:at] = ["Verdicts:", "", *map(line, items), ""]
    return answers or ["- No verdicts yet: no finished pairs of runs."]
