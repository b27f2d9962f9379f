"""The controls: each member of the averaging family (variants), RBWA's alternatives and the write-back periods against
SGD, each write-back period against never writing back, and RBWA and RBWA-E against the LR schedules they equal or
resemble (controls, alternatives)."""

from __future__ import annotations

from rbwa.analysis.findings.core import (
    Equivalence,
    Experiment,
    Finding,
    compare,
    equivalence,
    identity_claim,
    measure,
    paired_differences,
    twin_of,
)


def control_claims(exp: Experiment) -> list[Finding | Equivalence | str]:
    """The comparisons of variants, alternatives, writeback and controls; a control that equals its method (RBWA and
    SGD on the harmonic LR) is an identity, judged by the largest gap, not tested."""
    groups = exp.groups()
    out: list[Finding | Equivalence | str] = []
    if exp.name in ("variants", "alternatives", "writeback"):
        for (setting, label), runs in groups.items():
            sgd = groups.get((setting, "sgd"), [])
            if label == "sgd" or not paired_differences(measure(runs, "test_acc"), measure(sgd, "test_acc")):
                continue
            out.append(compare(f"Does {label} beat sgd?", f"{label} - sgd", runs, sgd))
            if label.startswith("rbwa"):
                out.append(compare(f"Is {label}'s final training loss lower than sgd's?", f"sgd - {label}",
                                   runs, sgd, "train_loss"))
    if exp.name == "writeback":  # each write-back period against never writing back
        for (setting, label), runs in groups.items():
            never = groups.get((setting, "ema (never written back)"), [])
            if label in ("sgd", "ema (never written back)") or not paired_differences(measure(runs, "test_acc"),
                                                                            measure(never, "test_acc")):
                continue
            out.append(compare(f"Does {label} beat ema (never written back)?", f"{label} - ema", runs, never))
    if exp.name in ("controls", "alternatives"):
        for (setting, label), runs in groups.items():
            if not label.startswith("sgd ("):
                continue
            twin = twin_of(label) or "rbwa"  # the controls that equal no method are rbwa's
            ours = groups.get((setting, twin), [])
            if not paired_differences(measure(ours, "test_acc"), measure(runs, "test_acc")):
                continue
            if twin_of(label) and (same := equivalence(identity_claim(label), ours, runs)):
                out.append(same)
            else:
                out.append(compare(f"Does {twin} beat {label}?", f"{twin} - {label}", ours, runs, show_curve=True))
    return out
