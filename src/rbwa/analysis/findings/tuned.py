"""The language model tuned fairly (lm-tuned): averages against decays with an equal tuning budget. Every method's
setting (its peak learning rate; WSD's decay fraction; an average's learning rate and candidate) is chosen on the
other seeds and scored on the held-out seed, so no method's number is a minimum over its own noise; the optimism of
choosing on a seed's own runs is stated beside it.

Methods, from the runs' configs: constant-LR runs with snapshots (their final weights, and every post-hoc candidate
of their ``posthoc.csv``: all families together, and WSM alone), cosine, and WSD (every decay fraction). The measure
is the final validation loss (lower is better).
"""

from __future__ import annotations

import math
from typing import Any

from rbwa.analysis.findings.core import (
    Experiment,
    Finding,
    Run,
    commit_differences,
    machine_differences,
    seeds_text,
)
from rbwa.analysis.findings.posthoc import (
    WORST,
    Order,
    candidate_rank,
    optimism_text,
    picks_text,
    posthoc_rows,
    tune,
)


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


def method_losses(exp: Experiment) -> tuple[Losses, dict[str, dict[tuple[int, str], Run]], dict[str, set[str]],
                                         dict[str, set[int]], dict[str, Order]]:
    """(method -> seed -> setting -> final validation loss, method -> (seed, setting) -> the run it came from,
    method -> the run settings of its grid, method -> the seeds that have a run of it, finished or not, method ->
    setting -> its rank for a tie: a run's peak LR and decay, a candidate's family and value then its LR) for ``exp``.
    A finished constant-LR run with post-hoc rows gives its final weights (the last snapshot alone), each candidate
    ("lr X: label") to "an average (any family)", and its WSM candidates to "WSM". A diverged run scores
    :data:`WORST` for its setting (every candidate of it, for the averages): a setting that fails is an outcome, not
    a run still owed."""
    from rbwa.analysis.posthoc import final_reestimated

    losses: Losses = {}
    runs: dict[str, dict[tuple[int, str], Run]] = {}
    kinds = {m: [r for r in exp.runs if r.config and r.config.get("lr_schedule", "constant") == kind]
             for m, kind in METHODS.items()}
    grid = {m: {setting(r.config) for r in rs} for m, rs in kinds.items()}
    seeds = {m: {r.seed for r in rs} for m, rs in kinds.items()}
    diverged: list[tuple[int, str, Run]] = []
    order: dict[str, Order] = {}

    def add(method: str, seed: int, name: str, loss: float, run: Run, rank: tuple[float, ...] = ()) -> None:
        losses.setdefault(method, {}).setdefault(seed, {})[name] = loss if math.isfinite(loss) else WORST
        runs.setdefault(method, {})[(seed, name)] = run
        order.setdefault(method, {}).setdefault(name, rank or (run.config["lr"], run.config.get("decay_fraction", 0)))

    for r in exp.runs:
        if not r.config:
            continue
        schedule, name = r.config.get("lr_schedule", "constant"), setting(r.config)
        if r.status == "diverged" and (schedule in DECAYS or schedule == "constant"):
            add(DECAYS.get(schedule, "constant LR, final weights"), r.seed, name, WORST, r)
            if schedule == "constant":
                diverged.append((r.seed, name, r))
            continue
        if not (r.finished and r.metrics):
            continue
        if schedule in DECAYS:
            add(DECAYS[schedule], r.seed, name, r.metrics[-1]["test_loss"], r)
            continue
        rows = posthoc_rows(r)
        last = final_reestimated(rows) if rows else None
        if schedule != "constant" or last is None:
            continue
        add("constant LR, final weights", r.seed, name, float(last["test_loss"]), r)
        for row in rows:
            rank = (*candidate_rank(row), r.config["lr"])
            add("an average (any family)", r.seed, f"{name}: {row['label']}", float(row["test_loss"]), r, rank)
            if row["family"] == "wsm":
                add("WSM", r.seed, f"{name}: {row['label']}", float(row["test_loss"]), r, rank)
    for seed, name, r in diverged:  # every candidate the other seeds evaluated at this setting fails here
        for method in ("an average (any family)", "WSM"):
            labels = {c for d in losses.get(method, {}).values() for c in d if c.startswith(f"{name}: ")}
            for label in labels or {f"{name}: diverged"}:
                add(method, seed, label, WORST, r)
    return losses, runs, grid, seeds, order


Sweep = dict[str, dict[float, dict[int, float]]]  # line -> peak LR -> seed -> final validation loss


def lr_sweep(exp: Experiment) -> Sweep:
    """Each method's final validation loss by peak learning rate, on the seeds that hold its whole grid: cosine and
    constant LR as they end, WSD one line per decay fraction, and an average (and WSM) at each learning rate the
    candidate chosen among that rate's on the other seeds. Diverged runs are :data:`WORST`. What the tuned choice
    picks from, drawn."""
    losses, _, grid, _, order = method_losses(exp)
    out: Sweep = {}
    for method, by_seed in losses.items():
        ready, _ = complete(by_seed, grid[method])
        if len(ready) < 2:
            continue
        for name in sorted({c.split(": ")[0] for d in ready.values() for c in d}):
            lr, _, decay = name.removeprefix("lr ").partition(", ")
            line = f"{method}, {decay}" if decay else method
            if method in DECAYS.values() or method == "constant LR, final weights":
                values = {s: d[name] for s, d in ready.items() if name in d}
            else:
                t = tune({s: {c: v for c, v in d.items() if c.split(": ")[0] == name} for s, d in ready.items()},
                         order[method])
                values = t.held if t else {}
            if values:
                out.setdefault(line, {})[float(lr)] = values
    return out


# (A, B): does A, tuned, reach a lower validation loss than B, tuned?
QUESTIONS = [("an average (any family)", "cosine"), ("an average (any family)", "WSD"), ("WSM", "WSD"),
             ("WSD", "cosine"), ("an average (any family)", "constant LR, final weights")]


def _loss(value: float) -> str:
    """A held-out loss in words: 4 decimals, or 'diverged'. Pure."""
    return f"{value:.4f}" if math.isfinite(value) else "diverged"


def tuned_claims(exp: Experiment) -> list[Finding | str]:
    """The tuned comparisons of ``exp``: each method's choices and optimism in a line (or why it is not tuned yet),
    then a finding per question (positive differences: A's validation loss is the lower)."""
    losses, runs, grid, seeds, order = method_losses(exp)
    where = "A GPT on text, every method tuned on the other seeds"
    out: list[Finding | str] = []
    tuned = {}
    for method in [*losses, *(m for m in METHODS if m not in losses and seeds[m])]:
        by_seed = losses.get(method, {})
        ready, waiting = complete(by_seed, grid[method])
        waiting = sorted({*waiting, *(seeds[method] - set(by_seed))})
        wait = (f"{seeds_text(waiting)} still {'lack' if len(waiting) > 1 else 'lacks'} a finished run of the grid (or "
                f"its post-hoc rows) and wait{'' if len(waiting) > 1 else 's'}" if waiting else "")
        t = tune(ready, order.get(method))
        if t is None:
            out.append(f"{where}: {method}: not tuned yet, fewer than 2 seeds hold every run of its grid"
                       f"{'; ' + wait if wait else ''}; its questions wait")
            continue
        tuned[method] = t
        notes = [optimism_text(list(t.optimism.values()), " nats", 4)] if t.optimism else []
        notes += [wait] if wait else []
        if t.failed:
            notes.append(f"the choice diverged on {seeds_text(t.failed)} (its loss the worst"
                         f"{'; out of the optimism' if t.optimism else ''})")
        if t.left_out:
            notes.append("settings not on every seed, left out of the choice: "
                         + ", ".join(f"seed {s}: {n}" for s, n in sorted(t.left_out.items())))
        if method == "an average (any family)":
            notes.append("its candidates include the final weights alone ('LAWA, last 1 epoch ends')")
        out.append(f"{where}: {method}: chosen {picks_text(t.picks)}; validation loss "
                   + "; ".join(f"seed {s}: {_loss(v)}" for s, v in sorted(t.held.items()))
                   + "".join(f"; {n}" for n in notes))
    for a, b in QUESTIONS:
        if a not in tuned or b not in tuned:
            continue  # the method's line says it waits
        ta, tb = tuned[a], tuned[b]
        what = f"{where}: does {a}, tuned, reach a lower validation loss than {b}, tuned?"
        both = sorted(set(ta.held) & set(tb.held))
        failed = [s for s in both if s in ta.failed or s in tb.failed]
        diffs = {s: tb.held[s] - ta.held[s] for s in both if s not in failed}
        if failed:
            out.append(f"{what} On {seeds_text(failed)} a tuned choice diverged: left out of the paired difference "
                       "(the method lines name whose)")
        if len(diffs) < 2:
            out.append(f"{what} Fewer than 2 seeds pair the two tuned choices: not tested")
            continue
        ra = [runs[a][(s, ta.picks[s])] for s in diffs]
        rb = [runs[b][(s, tb.picks[s])] for s in diffs]
        out.append(Finding(what, f"{b} - {a}", diffs, {}, digits=4, unit="", key=("lm tuned", a, b),
                           machines=machine_differences(ra, rb), commits=commit_differences(ra, rb)))
    return out
