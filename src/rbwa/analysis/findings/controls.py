"""The controls: each member of the averaging family (variants), RBWA's alternatives and the write-back periods against
SGD, each write-back period against never writing back, and RBWA and RBWA-E against the LR schedules they equal or
resemble (controls, alternatives)."""

from __future__ import annotations

from rbwa.analysis.findings.core import Experiment, Finding, compare, measure, paired_differences


def control_claims(exp: Experiment) -> list[Finding | str]:
    """The comparisons of variants, alternatives, writeback and controls."""
    groups = exp.groups()
    out: list[Finding | str] = []
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
            twin = "rbwa-e" if label.endswith("= rbwa-e)") else "rbwa"  # the other controls are for rbwa
            ours = groups.get((setting, twin), [])
            if paired_differences(measure(ours, "test_acc"), measure(runs, "test_acc")):
                out.append(compare(f"Does {twin} beat {label}?", f"{twin} - control", ours, runs, show_curve=True))
    return out
