"""Side averages chosen after training (the post-hoc experiments): for each family (SWA start, LAWA window, EMA
half-life), and for every candidate of every family together (the family chosen too, as the tuned comparison of
lm-tuned chooses it), the candidate chosen on the other seeds, tested on the held-out seed against the run's own final
weights, against a decay schedule and against RBWA; the leave-one-out optimism of each choice; and how stable those
choices are across seeds and datasets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rbwa.analysis.findings.core import (
    Experiment,
    Finding,
    Run,
    commit_differences,
    dataset_name,
    machine_differences,
    seeds_text,
)
from rbwa.analysis.stats import mean_ci
from rbwa.training.config import POSTHOC_FAMILIES as FAMILY_ORDER

POSTHOC_FAMILIES = {"swa": "SWA start", "lawa": "LAWA window", "ema": "EMA half-life"}
ANY = "any family"  # every candidate of a posthoc.csv together, whatever its family: the family is chosen too
ANY_NAME = "average (any family)"
# the runs of other experiments the best post-hoc side average is measured against, by their label
POSTHOC_BASELINES = {"rbwa": "RBWA", "sgd (cosine LR)": "cosine-LR SGD"}
TIE = 1e-9  # means closer than this are a tie


def posthoc_rows(run: Run) -> list[dict[str, Any]]:
    """The candidates ``rbwa posthoc`` evaluated for a run (its posthoc/posthoc.csv), [] where it has none."""
    from rbwa.analysis.posthoc import read_results

    return read_results(run.path)


Order = dict[str, tuple[float, ...]]  # candidate -> its rank for a tie: the lowest wins


def choose_on_others(accuracy: dict[int, dict[str, float]], order: Order | None = None) -> dict[int, str]:
    """Held-out seed -> the candidate with the highest mean accuracy over the *other* seeds, so that the number
    a seed reports is never a maximum over its own noise. Only candidates that every seed evaluated compete. A score
    that is not a finite number (a diverged run, a NaN) is a failure: the candidate that failed on the fewest other
    seeds wins, by the mean of its finite scores. A tie goes to the lowest ``order`` (the earliest SWA start, the
    shortest LAWA window or EMA half-life; a candidate it lacks first), then to the label. Pure."""
    common = set.intersection(*(set(a) for a in accuracy.values())) if accuracy else set()
    out = {}
    for held in accuracy:
        others = [s for s in accuracy if s != held]
        if not common or not others:
            continue
        scores = {c: _score([accuracy[s][c] for s in others]) for c in common}
        fewest = max(failed for failed, _ in scores.values())
        top = max(mean for failed, mean in scores.values() if failed == fewest)
        out[held] = min((c for c, (failed, mean) in scores.items() if failed == fewest and mean >= top - TIE),
                        key=lambda c: ((order or {}).get(c, ()), c))
    return out


def _score(values: list[float]) -> tuple[int, float]:
    """(minus the number of failures, the mean of the finite values, or -inf where none is). Pure."""
    finite = [v for v in values if math.isfinite(v)]
    return len(finite) - len(values), sum(finite) / len(finite) if finite else -math.inf


WORST = math.inf  # the loss of a diverged run, or a loss that is not a number: never chosen over a finite one


@dataclass(frozen=True)
class Tuned:
    """One method tuned on the other seeds: per held-out seed the setting chosen, its loss there, the seed's own
    lowest loss over the same settings, and how many of the seed's settings were left out of the choice (not on every
    seed)."""

    picks: dict[int, str]
    held: dict[int, float]
    best: dict[int, float]
    left_out: dict[int, int] = field(default_factory=dict)

    @property
    def optimism(self) -> dict[int, float]:
        """Seed -> how much lower its own best looks than the choice made on the others (>= 0), where the choice did
        not diverge there."""
        return {s: self.held[s] - self.best[s] for s in self.held if math.isfinite(self.held[s])}

    @property
    def failed(self) -> list[int]:
        """The seeds where the choice made on the others diverged (or scored no number)."""
        return sorted(s for s, v in self.held.items() if not math.isfinite(v))


def tune(losses: dict[int, dict[str, float]], order: Order | None = None) -> Tuned | None:
    """Seed -> setting -> loss, tuned on the other seeds (the lowest mean loss over them; a tie to the lowest
    ``order``, then the name), over the settings every seed holds (the others are counted in ``left_out``); None
    below 2 seeds. A NaN loss counts as :data:`WORST`. The one leave-one-out choice of the reports: lm-tuned's
    settings, and a post-hoc family's candidates (their scores negated, :func:`scores`). Pure."""
    losses = {s: {c: WORST if math.isnan(v) else v for c, v in d.items()} for s, d in losses.items()}
    common = set.intersection(*(set(d) for d in losses.values())) if losses else set()
    picks = choose_on_others({s: {c: -v for c, v in d.items() if c in common} for s, d in losses.items()}, order)
    if len(picks) < 2:
        return None
    left = {s: n for s, d in losses.items() if (n := len(set(d) - common))}
    return Tuned(picks, {s: losses[s][c] for s, c in picks.items()},
                 {s: min(losses[s][c] for c in common) for s in picks}, left)


def best_alone(accuracy: dict[str, float]) -> list[str]:
    """The candidates with a seed's own highest finite accuracy (more than one where they tie; none where no score is
    a number). Pure."""
    finite = [a for a in accuracy.values() if math.isfinite(a)]
    top = max(finite, default=math.nan)
    return sorted(c for c, a in accuracy.items() if a >= top - TIE)


def posthoc_series(exp: Experiment, label: str) -> dict[int, tuple[Run, list[dict[str, Any]]]]:
    """Seed -> (run, its post-hoc rows) for the finished runs of ``label`` that hold their final weights' row."""
    from rbwa.analysis.posthoc import final_reestimated

    found = {}
    for r in exp.runs:
        if r.label == label and r.finished:
            rows = posthoc_rows(r)
            if rows and final_reestimated(rows):
                found[r.seed] = (r, rows)
    return found


def final_metric(runs: list[Run], metric: str = "test_acc") -> dict[int, float]:
    """Seed -> the final test accuracy (or ``metric``) each finished run recorded (its evaluated weights, BatchNorm
    as trained)."""
    return {r.seed: r.metrics[-1][metric] for r in runs if r.finished and r.metrics}


def difference(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def scores(series: dict[int, tuple[Run, list[dict[str, Any]]]], family: str,
            metric: str) -> tuple[dict[int, dict[str, float]], Tuned | None]:
    """(seed -> candidate -> score, higher is better; the candidate chosen on the other seeds, as :func:`tune` of the
    scores' negation: None below 2 seeds that hold one) for one ``family``, or for every candidate where it is
    :data:`ANY`. A tie goes to the lowest value (the SWA start, the
    window, the half-life, gamma), across families (:data:`ANY`) to the earlier family of swa, lawa, ema, wsm,
    power first, then to the label: never to the order of a file's rows."""
    sign = -1.0 if metric.endswith("loss") else 1.0
    rows_of = {s: [r for r in rows if family in (ANY, r["family"])] for s, (_, rows) in series.items()}
    score = {s: {r["label"]: sign * r[metric] for r in rows} for s, rows in rows_of.items()}
    order = {r["label"]: candidate_rank(r) for rows in rows_of.values() for r in rows}
    return score, tune({s: {c: -v for c, v in a.items()} for s, a in score.items()}, order)


def candidate_rank(row: dict[str, Any]) -> tuple[float, float]:
    """A posthoc.csv row's rank for a tie, the lowest first: its family's place in swa, lawa, ema, wsm, power, then
    its value. Pure."""
    family = row["family"]
    return float(FAMILY_ORDER.index(family)) if family in FAMILY_ORDER else math.inf, float(row["value"])


def optimism_text(values: list[float], unit: str, digits: int) -> str:
    """The leave-one-out optimism in words: how much better a seed's own best looks than the choice made on the
    other seeds (each value >= 0), on average and at most. Pure."""
    return (f"the leave-one-out optimism (a seed's own best beyond the choice made on the others) "
            f"{sum(values) / len(values):.{digits}f}{unit} on average, {max(values):.{digits}f} at most")


def picks_text(picks: dict[int, str]) -> str:
    """'A (seeds 0, 2), B (seed 1)': each chosen candidate with the seeds that chose it, the most chosen first. Pure."""
    by: dict[str, list[int]] = {}
    for seed, choice in sorted(picks.items()):
        by.setdefault(choice, []).append(seed)
    return ", ".join(f"{c} ({seeds_text(s)})"
                     for c, s in sorted(by.items(), key=lambda item: (-len(item[1]), item[1])))


def choose_candidates(series: dict[int, tuple[Run, list[dict[str, Any]]]], family: str, name: str, where: str,
                      out: list[Finding | str], metric: str = "test_acc") -> dict[int, float] | None:
    """Seed -> the ``metric`` of the ``family`` candidate chosen on the other seeds (the highest accuracy, or the
    lowest loss), or None where none can be chosen; the choices and their leave-one-out optimism (how much better a
    seed's own best looks than the choice made on the others), in a line appended to ``out``."""
    sign = -1.0 if metric.endswith("loss") else 1.0
    score, tuned = scores(series, family, metric)
    lacking = sorted(s for s, a in score.items() if not a)
    if lacking and len(lacking) < len(score):
        out.append(f"{where}: {seeds_text(lacking)} {'have' if len(lacking) > 1 else 'has'} no post-hoc {name} "
                   "candidate (`rbwa posthoc` ran with other --families), so none is chosen; rerun it on every seed "
                   "with the same families.")
    common = set.intersection(*(set(a) for a in score.values())) if all(score.values()) else set()
    if all(score.values()) and not common:
        out.append(f"{where}: the seeds' posthoc.csv files share no {name} candidate (each seed was evaluated on "
                   "another grid), so none is chosen; rerun `rbwa posthoc` with the same grid.")
    if tuned is None:
        return None
    picks = tuned.picks
    shared = {s: {c: v for c, v in a.items() if c in common} for s, a in score.items()}
    families = {r["label"]: r["family"] for _, rows in series.values() for r in rows}
    left = {c for a in score.values() for c in a} - common
    alone = {s: " = ".join(b) + (" (a tie)" if len(b) > 1 else "") if (b := best_alone(a)) else "no number"
             for s, a in shared.items()}
    def shown(v: float) -> str:
        if not math.isfinite(v):
            return "no number"
        return f"{sign * v:.2f}%" if sign > 0 else f"validation loss {sign * v:.4f}"

    failed, optimism = tuned.failed, list(tuned.optimism.values())
    unit, digits = (" points", 2) if sign > 0 else (" nats", 4)
    out.append(f"{where}: post-hoc {name}, chosen on the other seeds: " + "; ".join(
        f"seed {s}: {c} ({shown(score[s][c])})" for s, c in sorted(picks.items()))
        + "; the best on each seed alone: " + "; ".join(f"seed {s}: {c}" for s, c in sorted(alone.items()))
        + (" (the same on every seed)" if len(set(alone.values())) == 1 else " (it differs between seeds)")
        + (f"; {optimism_text(optimism, unit, digits)}" if optimism else "")
        + (f"; {len(left)} candidate{'s' if len(left) > 1 else ''} not on every seed left out of the choice and "
           f"of each seed's best (of "
           f"{', '.join(sorted({families[c] for c in left}))})" if left else "")
        + (f"; the choice scored no number on {seeds_text(failed)}: left out of the optimism and of its comparisons"
           if failed else ""))
    held = {s: sign * -v for s, v in tuned.held.items() if s not in failed}
    return held if len(held) >= 2 else None


Series = dict[int, tuple[Run, list[dict[str, Any]]]]  # seed -> (run, its post-hoc rows)


def posthoc_methods(exp: Experiment, labels: list[str], metric: str = "test_acc") -> list[tuple[str, str, dict]]:
    """The post-hoc averages as methods, for a report's methods table: per snapshot-run label with at least 2 seeds,
    (setting, method, seed -> ``metric``) for its final weights with BatchNorm re-estimated (images only) and for
    each family's candidate chosen on the other seeds (and any family's, for constant-LR SGD, whose choice the claims
    state), scored on the held-out seed."""
    from rbwa.analysis.posthoc import final_reestimated
    from rbwa.experiments.grids import POSTHOC_LABELS

    sign = -1.0 if metric.endswith("loss") else 1.0
    out: list[tuple[str, str, dict]] = []
    for label in labels:
        series = posthoc_series(exp, label)
        if len(series) < 2:
            continue
        setting = next(iter(series.values()))[0].setting
        if sign > 0:  # a GPT has no BatchNorm: its final weights are the run's own row
            out.append((setting, f"{label}: final weights, BatchNorm re-estimated",
                        {s: float(final_reestimated(rows)[metric]) for s, (_, rows) in series.items()}))
        families = {**POSTHOC_FAMILIES, ANY: ANY_NAME} if label == POSTHOC_LABELS["constant"] else POSTHOC_FAMILIES
        for family, name in families.items():
            tuned = scores(series, family, metric)[1]
            held = {s: sign * -v for s, v in tuned.held.items() if s not in tuned.failed} if tuned else {}
            if len(held) >= 2:
                out.append((setting, f"{label}: post-hoc {name}, chosen on the other seeds", held))
    return out


def posthoc_claims(exp: Experiment, experiments: list[Experiment]) -> list[Finding | str]:
    """What the best side average, chosen after training, is worth, per family: the candidate chosen on the other
    seeds, tested on the held-out seed. Constant-LR SGD's against its own final weights, against cosine-LR and
    WSD-LR SGD's (can an average replace the decay?) and against RBWA; cosine-LR SGD's against its own final
    weights (does averaging add on top of the decay?) and against constant-LR SGD's; WSD against cosine. Final weights
    are the last snapshot with BatchNorm re-estimated like every candidate, so the gain is the averaging's, not the
    re-estimation's."""
    from rbwa.analysis.posthoc import bn_text
    from rbwa.experiments.grids import POSTHOC_LABELS

    constant = posthoc_series(exp, POSTHOC_LABELS["constant"])
    cosine = posthoc_series(exp, POSTHOC_LABELS["cosine"])
    wsd = posthoc_series(exp, POSTHOC_LABELS["wsd"])
    if len(constant) < 2:
        return across_datasets(exp, experiments)
    first = next(iter(constant.values()))[0]
    data, setting = first.config["dataset"], first.setting
    ds = dataset_name(first.config)
    others = _baselines(exp, experiments, data, setting)
    every = [row for series in (constant, cosine, wsd) for _, rows in series.values() for row in rows]
    # another experiment's cosine runs stand in only until this one's cover every seed (_family_claims)
    plain = ", ".join(sorted(name for name in others if name != "cosine-LR SGD" or not _covers(cosine, constant)))
    out: list[Finding | str] = [
        f"{ds}: every candidate's BatchNorm statistics were re-estimated on {bn_text(every)} (`rbwa posthoc "
        "--bn-images`), and so were the final weights it is compared with (the last snapshot alone, the candidate "
        f"'LAWA, last 1 epoch ends'){f'; the runs of other experiments ({plain}) re-estimate none' if plain else ''}. "
        "A candidate is chosen on the other seeds; a tie goes to the earliest SWA start, the shortest LAWA window or "
        "EMA half-life, and across families (an average of any family) to the earlier of SWA, LAWA, EMA, WSM and power "
        "EMA. The runs of another schedule or experiment share a seed's initial weights and batch order, "
        "not its trajectory: those differences compare two runs' outcomes, not one trajectory with itself."]
    # the two decays, each's final weights re-estimated like every candidate
    out += _paired(data, f"{ds}: does WSD (its last 20% decayed linearly to 0) beat cosine: final weights, BatchNorm "
                   "re-estimated?", "WSD - cosine-LR SGD", difference(_final(wsd), _final(cosine)), "wsd - cosine",
                   _runs(wsd), _runs(cosine))
    for family, name in POSTHOC_FAMILIES.items():
        out += _family_claims(family, name, ds, data, constant, cosine, wsd, others)
    # the tuned comparison (as lm-tuned's, at one learning rate): the family chosen too; against the run's own final
    # weights and the two decays only
    out += _family_claims(ANY, ANY_NAME, ds, data, constant, cosine, wsd, {}, tuned_only=True)
    return out + across_datasets(exp, experiments)


def _baselines(exp: Experiment, experiments: list[Experiment], data: str, setting: str) -> dict[str, list[Run]]:
    """The runs of the other experiments a post-hoc average is measured against (POSTHOC_BASELINES), on the same data
    and setting, by their name in the claims."""
    others: dict[str, list[Run]] = {}
    for other in experiments:
        for (s, label), group in other.groups().items():
            same_data = any(r.config and r.config["dataset"] == data for r in group)
            if label in POSTHOC_BASELINES and s == setting and same_data and other is not exp:
                others.setdefault(POSTHOC_BASELINES[label], group)
    return others


def _covers(cosine: Series, constant: Series) -> bool:
    """Whether the cosine-LR snapshot runs cover every seed of the constant-LR ones (then they are the decay's
    baseline, final weights BatchNorm re-estimated)."""
    return len(cosine) >= max(2, len(constant))


def _runs(series: Series) -> list[Run]:
    return [r for r, _ in series.values()]


def _paired(data: str, claim: str, what: str, diffs: dict[int, float], key: str, a: list[Run],
            b: list[Run]) -> list[Finding]:
    """The finding of paired ``diffs`` between the runs ``a`` and ``b`` (none below 2 seeds), keyed by ``data``."""
    if len(diffs) < 2:
        return []
    return [Finding(claim, what, diffs, {}, key=("posthoc", data, key),
                    machines=machine_differences(a, b), commits=commit_differences(a, b))]


def _final(series: Series) -> dict[int, float]:
    """Seed -> the test accuracy of its final weights alone, BatchNorm re-estimated like every candidate."""
    from rbwa.analysis.posthoc import final_reestimated

    return {s: float(final_reestimated(rows)["test_acc"]) for s, (_, rows) in series.items()}


def _family_claims(family: str, name: str, ds: str, data: str, constant: Series, cosine: Series, wsd: Series,
                   others: dict[str, list[Run]], tuned_only: bool = False) -> list[Finding | str]:
    """One family's findings (and lines: the candidates chosen) for constant-LR and cosine-LR SGD's snapshots;
    ``tuned_only``: constant-LR SGD's choice against its own final weights and the two decays alone."""
    out: list[Finding | str] = []

    def test(claim: str, what: str, diffs: dict[int, float], key: str, a: list[Run], b: list[Run]) -> None:
        out.extend(_paired(data, claim, what, diffs, key, a, b))

    runs_c, runs_k = _runs(constant), _runs(cosine)
    held = choose_candidates(constant, family, name, f"{ds}, constant-LR SGD", out)
    if held is None:
        return out
    test(f"{ds}: does the best post-hoc {name} of constant-LR SGD, chosen on the other seeds, beat the same run's "
         "final weights (BatchNorm re-estimated)?", f"post-hoc {family} - final weights",
         difference(held, _final(constant)), f"{family} constant - final", runs_c, runs_c)
    raw = difference(held, final_metric(runs_c))
    if len(raw) >= 2 and not tuned_only:
        mean, lo, hi = mean_ci(list(raw.values()))
        out.append(f"{ds}: against the same runs' final weights with BatchNorm as trained, the post-hoc {name} "
                   f"gains {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] points (not a test: re-estimating BatchNorm alone "
                   "is part of that gain).")
    # the cosine-LR snapshot runs are the fair baseline (their final weights re-estimated like the candidates)
    # once they cover every seed; until then the cosine runs of another experiment, as trained
    if _covers(cosine, constant):
        test(f"{ds}: can an average replace the decay: does the best post-hoc {name} of constant-LR SGD beat "
             "cosine-LR SGD's final weights (BatchNorm re-estimated)?", f"post-hoc {family} - cosine-LR SGD",
             difference(held, _final(cosine)), f"{family} constant - cosine final", runs_c, runs_k)
    elif "cosine-LR SGD" in others:
        group = others["cosine-LR SGD"]
        test(f"{ds}: can an average replace the decay: does the best post-hoc {name} of constant-LR SGD beat "
             "cosine-LR SGD's final weights (BatchNorm as trained)?", f"post-hoc {family} - cosine-LR SGD",
             difference(held, final_metric(group)), f"{family} constant - cosine (alternatives)", runs_c, group)
    if len(wsd) >= 2:
        test(f"{ds}: can an average replace WSD's decay: does the best post-hoc {name} of constant-LR SGD beat "
             "WSD-LR SGD's final weights (BatchNorm re-estimated)?", f"post-hoc {family} - WSD-LR SGD",
             difference(held, _final(wsd)), f"{family} constant - wsd final", runs_c, _runs(wsd))
    if "RBWA" in others:
        group = others["RBWA"]
        test(f"{ds}: does the best post-hoc {name} of constant-LR SGD, chosen on the other seeds, beat RBWA?",
             f"post-hoc {family} - RBWA", difference(held, final_metric(group)), f"{family} constant - rbwa",
             runs_c, group)
    if tuned_only:
        return out
    held_k = choose_candidates(cosine, family, name, f"{ds}, cosine-LR SGD", out) if len(cosine) >= 2 else None
    if held_k is None:
        return out
    test(f"{ds}: does averaging add on top of the decay: does the best post-hoc {name} of cosine-LR SGD beat its "
         "final weights (BatchNorm re-estimated)?", f"post-hoc {family} of cosine - final weights",
         difference(held_k, _final(cosine)), f"{family} cosine - final", runs_k, runs_k)
    test(f"{ds}: does the best post-hoc {name} of cosine-LR SGD beat constant-LR SGD's?",
         f"post-hoc {family}: cosine - constant", difference(held_k, held), f"{family} cosine - constant",
         runs_k, runs_c)
    return out


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
                              for series in (posthoc_series(e, label) for e in posthoc) if len(series) >= 2]
                   for schedule, label in schedules.items()}
    out = []
    for family, name in POSTHOC_FAMILIES.items():
        parts, datasets = [], 0
        for schedule, found_series in by_schedule.items():
            found = {}
            for ds, series in found_series:
                tuned = scores(series, family, "test_acc")[1]
                if tuned:
                    found[ds] = tuned.picks
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
