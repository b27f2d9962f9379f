"""The language model (lm): a GPT on text, the paper's claims by its validation and training loss, RBWA against its
twin and the decay schedules, and the best post-hoc average of constant-LR AdamW's snapshots."""

from __future__ import annotations

from rbwa.analysis.findings.core import (
    Equivalence,
    Experiment,
    Finding,
    Run,
    commit_differences,
    compare,
    equivalence,
    identity_claim,
    machine_differences,
    measure,
    paired_differences,
    twin_of,
)
from rbwa.analysis.findings.posthoc import POSTHOC_FAMILIES, choose_candidates, difference, final_metric, posthoc_series

LM_BASE = "adamw"  # the lm experiment's constant-LR AdamW runs, which store the snapshots


def lm_claims(exp: Experiment) -> list[Finding | Equivalence | str]:
    """A GPT on text: the paper's claims by validation loss (claim 1) and training loss (claim 2), RBWA against its
    twin and the decay schedules, every other method against constant-LR AdamW, and the best post-hoc average of the
    constant-LR runs' snapshots against their final weights, the schedules and RBWA. Lower loss is better: each
    difference is signed so that a positive one supports the claim."""
    groups = exp.groups()
    out: list[Finding | Equivalence | str] = []

    def paired(a: list[Run], b: list[Run]) -> bool:
        return bool(paired_differences(measure(a, "test_loss"), measure(b, "test_loss")))

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
            if twin_of(label) == "rbwa" and paired(rbwa, runs) and (
                    same := equivalence(identity_claim(label), rbwa, runs)):
                out.append(same)
            elif label.startswith(f"{LM_BASE} (") and paired(rbwa, runs):
                out.append(compare(f"Does rbwa reach a lower validation loss than {label}?", f"{label} - rbwa", rbwa,
                                   runs, "test_loss", show_curve=True))
            if paired(runs, base) and not twin_of(label):  # a twin's answer is RBWA's (claim 1)
                out.append(compare(f"Does {label} reach a lower validation loss than adamw?", f"adamw - {label}",
                                   runs, base, "test_loss"))
        out += _lm_posthoc(exp, groups, setting)
    return out


def _lm_posthoc(exp: Experiment, groups: dict[tuple[str, str], list[Run]], setting: str) -> list[Finding | str]:
    from rbwa.analysis.posthoc import final_reestimated

    series = {s: v for s, v in posthoc_series(exp, LM_BASE).items() if v[0].setting == setting}
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
                (other, final_metric(groups.get((setting, other), []), "test_loss"), groups.get((setting, other), []))
                for other in (f"{LM_BASE} (cosine LR)", f"{LM_BASE} (wsd)", "rbwa")]:
            diffs = difference(theirs, held)  # positive: the average's validation loss is the lower one
            if len(diffs) >= 2:
                what = f"{'final weights' if group is runs else label} - post-hoc {family}"
                out.append(Finding(f"{where}: does the best post-hoc {name}, chosen on the other seeds, reach a lower "
                                   f"validation loss than {label}?", what,
                                   diffs, {}, digits=4, unit="", key=("lm posthoc", setting, family, label),
                                   machines=machine_differences(runs, group), commits=commit_differences(runs, group)))
    return out
