"""The language model tuned fairly (lm-tuned): averages against decays with an equal tuning budget. Every method's
setting (its peak learning rate; WSD's decay fraction; an average's learning rate and candidate) is chosen on the
other seeds and scored on the held-out seed, so no method's number is a minimum over its own noise; the optimism of
choosing on a seed's own runs is stated beside it.

Methods, from the runs' configs: constant-LR runs with snapshots (their final weights, and every post-hoc candidate
of their ``posthoc.csv``: all families together, and WSM alone), cosine, and WSD (every decay fraction). The measure
is the final validation loss (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbwa.analysis.findings.core import Experiment, Finding, Run, commit_differences, machine_differences
from rbwa.analysis.findings.posthoc import choose_on_others, picks_text, posthoc_rows
from rbwa.analysis.stats import mean_ci


@dataclass(frozen=True)
class Tuned:
    """One method tuned on the other seeds: per held-out seed the setting chosen, its loss there, and the seed's own
    lowest loss over the same settings."""

    picks: dict[int, str]
    held: dict[int, float]
    best: dict[int, float]

    @property
    def optimism(self) -> dict[int, float]:
        """Seed -> how much lower its own best looks than the choice made on the others (>= 0)."""
        return {s: self.held[s] - self.best[s] for s in self.held}


def tune(losses: dict[int, dict[str, float]], order: dict[str, float] | None = None) -> Tuned | None:
    """Seed -> setting -> loss, tuned on the other seeds (the lowest mean loss over them; a tie to the lowest
    ``order``, then the name), over the settings every seed holds; None below 2 seeds. Pure."""
    common = set.intersection(*(set(d) for d in losses.values())) if losses else set()
    picks = choose_on_others({s: {c: -v for c, v in d.items() if c in common} for s, d in losses.items()}, order)
    if len(picks) < 2:
        return None
    return Tuned(picks, {s: losses[s][c] for s, c in picks.items()},
                 {s: min(losses[s][c] for c in common) for s in picks})


def complete(losses: dict[int, dict[str, float]], grid: set[str]) -> tuple[dict[int, dict[str, float]], list[int]]:
    """(the seeds whose settings cover every run setting of the ``grid``, the seeds still waiting for some), where a
    setting "lr X: candidate" belongs to the run setting "lr X". Pure."""
    def covers(d: dict[str, float]) -> bool:
        return grid <= {c.split(": ")[0] for c in d}
    return {s: d for s, d in losses.items() if covers(d)}, sorted(s for s, d in losses.items() if not covers(d))


def setting(cfg: dict[str, Any]) -> str:
    """A run's tuned setting in words: its peak learning rate, and WSD's decay fraction. Pure."""
    decay = f", decay {cfg['decay_fraction']:g}" if cfg.get("lr_schedule") == "wsd" else ""
    return f"lr {cfg['lr']:g}{decay}"


Losses = dict[str, dict[int, dict[str, float]]]  # method -> seed -> setting -> final validation loss


DECAYS = {"cosine": "cosine", "wsd": "WSD"}  # LR schedule -> the method its runs are, as they end
METHODS = {**{m: s for s, m in DECAYS.items()}, "constant LR, final weights": "constant",
           "an average (any family)": "constant", "WSM": "constant"}  # method -> the LR schedule of its runs


def method_losses(exp: Experiment) -> tuple[Losses, dict[str, dict[tuple[int, str], Run]], dict[str, set[str]]]:
    """(method -> seed -> setting -> final validation loss, method -> (seed, setting) -> the run it came from,
    method -> the run settings of its grid, run or not) for ``exp``. A finished constant-LR run with post-hoc rows
    gives its final weights (the last snapshot alone), each candidate ("lr X: label") to "an average (any family)",
    and its WSM candidates to "WSM"."""
    from rbwa.analysis.posthoc import final_reestimated

    losses: Losses = {}
    runs: dict[str, dict[tuple[int, str], Run]] = {}
    grid = {m: {setting(r.config) for r in exp.runs if r.config and r.config.get("lr_schedule", "constant") == kind}
            for m, kind in METHODS.items()}

    def add(method: str, seed: int, name: str, loss: float, run: Run) -> None:
        losses.setdefault(method, {}).setdefault(seed, {})[name] = loss
        runs.setdefault(method, {})[(seed, name)] = run

    for r in exp.runs:
        if not (r.finished and r.config and r.metrics):
            continue
        schedule, name = r.config.get("lr_schedule", "constant"), setting(r.config)
        if schedule in DECAYS:
            add(DECAYS[schedule], r.seed, name, r.metrics[-1]["test_loss"], r)
            continue
        rows = posthoc_rows(r)
        last = final_reestimated(rows) if rows else None
        if schedule != "constant" or last is None:
            continue
        add("constant LR, final weights", r.seed, name, float(last["test_loss"]), r)
        for row in rows:
            add("an average (any family)", r.seed, f"{name}: {row['label']}", float(row["test_loss"]), r)
            if row["family"] == "wsm":
                add("WSM", r.seed, f"{name}: {row['label']}", float(row["test_loss"]), r)
    return losses, runs, grid


# (A, B): does A, tuned, reach a lower validation loss than B, tuned?
QUESTIONS = [("an average (any family)", "cosine"), ("an average (any family)", "WSD"), ("WSM", "WSD"),
             ("WSD", "cosine"), ("an average (any family)", "constant LR, final weights")]


def tuned_claims(exp: Experiment) -> list[Finding | str]:
    """The tuned comparisons of ``exp``: each method's choices and optimism in a line, then a finding per question
    (positive differences: A's validation loss is the lower)."""
    losses, runs, grid = method_losses(exp)
    where = "A GPT on text, every method tuned on the other seeds"
    out: list[Finding | str] = []
    tuned = {}
    for method, by_seed in losses.items():
        ready, waiting = complete(by_seed, grid[method])
        t = tune(ready)
        if t is None:
            continue
        tuned[method] = t
        mean, lo, hi = mean_ci(list(t.optimism.values()))
        out.append(f"{where}: {method}: chosen {picks_text(t.picks)}; validation loss "
                   + "; ".join(f"seed {s}: {v:.4f}" for s, v in sorted(t.held.items()))
                   + f"; the leave-one-out optimism (the best on a seed's own runs below the choice made on the "
                   f"others) {mean:.4f} nats on average [{lo:.4f}, {hi:.4f}]"
                   + (f"; seed{'s' * (len(waiting) > 1)} {', '.join(map(str, waiting))} still "
                      f"{'lack' if len(waiting) > 1 else 'lacks'} a run of the grid (unfinished, diverged or without "
                      f"post-hoc rows) and wait{'' if len(waiting) > 1 else 's'}" if waiting else ""))
    for a, b in QUESTIONS:
        if a not in tuned or b not in tuned:
            continue
        ta, tb = tuned[a], tuned[b]
        diffs = {s: tb.held[s] - ta.held[s] for s in sorted(set(ta.held) & set(tb.held))}
        if len(diffs) < 2:
            continue
        ra = [runs[a][(s, ta.picks[s])] for s in diffs]
        rb = [runs[b][(s, tb.picks[s])] for s in diffs]
        out.append(Finding(f"{where}: does {a}, tuned, reach a lower validation loss than {b}, tuned?",
                           f"{b} - {a}", diffs, {}, digits=4, unit="", key=("lm tuned", a, b),
                           machines=machine_differences(ra, rb), commits=commit_differences(ra, rb)))
    return out
