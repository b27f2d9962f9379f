"""Averages against decays with an equal tuning budget (the `lm-tuned` experiment): every method's setting (its
peak learning rate; WSD's decay fraction; an average's learning rate and candidate) is chosen on the other seeds and
scored on the held-out seed, so no method's number is a minimum over its own noise; the optimism of choosing on a
seed's own runs is stated beside it.

Methods, from the runs' configs: constant-LR runs with snapshots (their final weights, and every post-hoc candidate
of their ``posthoc.csv``: all families together, and WSM alone), cosine, and WSD (every decay fraction). The measure
is the final validation loss (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbwa.findings import (
    Experiment,
    Finding,
    Run,
    choose_on_others,
    commit_differences,
    machine_differences,
    picks_text,
    posthoc_rows,
)
from rbwa.stats import mean_ci


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
    ``order``, then the name). Only seeds that hold every setting any seed holds take part; None below 2 such seeds.
    Pure."""
    every = set().union(*losses.values()) if losses else set()
    full = {s: d for s, d in losses.items() if set(d) == every}
    picks = choose_on_others({s: {c: -v for c, v in d.items()} for s, d in full.items()}, order)
    if len(picks) < 2:
        return None
    return Tuned(picks, {s: full[s][c] for s, c in picks.items()}, {s: min(full[s].values()) for s in picks})


def setting(cfg: dict[str, Any]) -> str:
    """A run's tuned setting in words: its peak learning rate, and WSD's decay fraction. Pure."""
    decay = f", decay {cfg['decay_fraction']:g}" if cfg.get("lr_schedule") == "wsd" else ""
    return f"lr {cfg['lr']:g}{decay}"


Losses = dict[str, dict[int, dict[str, float]]]  # method -> seed -> setting -> final validation loss


def method_losses(exp: Experiment) -> tuple[Losses, dict[str, dict[tuple[int, str], Run]]]:
    """(method -> seed -> setting -> final validation loss, method -> (seed, setting) -> the run it came from) for
    the finished runs of ``exp``. A constant-LR run with post-hoc rows gives its final weights (the last snapshot
    alone), each candidate ("lr X: label") to "an average (any family)", and its WSM candidates to "WSM"."""
    from rbwa.posthoc import final_reestimated

    losses: dict[str, dict[int, dict[str, float]]] = {}
    runs: dict[str, dict[tuple[int, str], Run]] = {}

    def add(method: str, seed: int, name: str, loss: float, run: Run) -> None:
        losses.setdefault(method, {}).setdefault(seed, {})[name] = loss
        runs.setdefault(method, {})[(seed, name)] = run

    for r in exp.runs:
        if not (r.finished and r.config and r.metrics):
            continue
        schedule, name = r.config.get("lr_schedule", "constant"), setting(r.config)
        if schedule in ("cosine", "wsd"):
            add("cosine" if schedule == "cosine" else "WSD", r.seed, name, r.metrics[-1]["test_loss"], r)
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
    return losses, runs


# (A, B): does A, tuned, reach a lower validation loss than B, tuned?
QUESTIONS = [("an average (any family)", "cosine"), ("an average (any family)", "WSD"), ("WSM", "WSD"),
             ("WSD", "cosine"), ("an average (any family)", "constant LR, final weights")]


def tuned_claims(exp: Experiment) -> list[Finding | str]:
    """The tuned comparisons of ``exp``: each method's choices and optimism in a line, then a finding per question
    (positive differences: A's validation loss is the lower)."""
    losses, runs = method_losses(exp)
    tuned = {m: t for m, by_seed in losses.items() if (t := tune(by_seed)) is not None}
    where = "A GPT on text, every method tuned on the other seeds"
    out: list[Finding | str] = []
    for method, t in tuned.items():
        mean, lo, hi = mean_ci(list(t.optimism.values()))
        out.append(f"{where}: {method}: chosen {picks_text(t.picks)}; validation loss "
                   + "; ".join(f"seed {s}: {v:.4f}" for s, v in sorted(t.held.items()))
                   + f"; the leave-one-out optimism (the best on a seed's own runs below the choice made on the "
                   f"others) {mean:.4f} nats on average [{lo:.4f}, {hi:.4f}]")
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
