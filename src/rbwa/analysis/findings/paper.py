"""The paper's claims on its own experiments: claim 1 (RBWA's higher final test accuracy) and claim 2 (its lower final
training loss) on fig3, fig5 and table1, and on table1's batch sizes claim 3 (a larger gain at 16-64 than at 128-256)
and 3b (the best batch size is 32)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rbwa.analysis.findings.core import (
    LAST_EPOCHS,
    Experiment,
    Finding,
    Run,
    compare,
    dataset_name,
    measure,
    paired_differences,
    provenance,
)
from rbwa.analysis.findings.summary import (
    LARGE_BATCHES,
    SMALL_BATCHES,
    TABLE1,
    first_config,
    paper_batch_effect,
    paper_gain,
)
from rbwa.analysis.stats import contrast, mean_std


def paper_claims(exp: Experiment, rows: list[dict[str, Any]]) -> list[Finding | str]:
    """Claims 1 and 2 at each setting of fig3, fig5 and table1 (``rows``: its summary rows), and claim 3 on table1."""
    groups = exp.groups()
    out: list[Finding | str] = []
    if exp.name in ("fig3", "fig5", "table1"):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            rbwa, sgd = groups.get((setting, "rbwa"), []), groups.get((setting, "sgd"), [])
            if not paired_differences(measure(rbwa, "test_acc"), measure(sgd, "test_acc")):
                continue
            gain = paper_gain(rows, setting)
            where = f"{dataset_name(first_config(rbwa + sgd))}, {exp.setting} {setting}"
            out.append(compare(f"Claim 1, {where}: RBWA reaches higher final test accuracy than SGD",
                               "RBWA - SGD", rbwa, sgd, claimed=gain,
                               note=f"; paper: {'-' if gain is None else f'{gain:+.2f}'}"))
            out.append(compare(f"Claim 2, {where}: RBWA's final training loss is lower than SGD's",
                               "SGD - RBWA", rbwa, sgd, "train_loss"))
    if exp.name == "table1":
        out += batch_size_claims(groups)
    return out


def _ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def batch_size_claims(groups: dict[tuple[str, str], list[Run]]) -> list[Finding | str]:
    """Claim 3 (RBWA's gain is larger at batch 16-64 than at 128-256) and 3b (its best batch size is 32).

    The batch sizes are independent runs (a seed's runs at two batch sizes share initial weights, not batches), so
    both are judged by Welch contrasts of group means, never by pairing seeds across batch sizes.
    """
    out: list[Finding | str] = []

    def gains(last: int) -> dict[str, dict[int, float]]:  # batch size -> seed -> RBWA - SGD at that batch size
        return {setting: paired_differences(measure(runs, "test_acc", last), measure(groups.get((setting, "sgd"), []),
                                                                             "test_acc", last))
                for (setting, label), runs in groups.items() if label == "rbwa"}

    def arms(last: int) -> list[tuple[float, list[float]]] | None:
        found = gains(last)
        if not all(found.get(b) for b in SMALL_BATCHES + LARGE_BATCHES):
            return None
        return ([(1 / len(SMALL_BATCHES), list(found[b].values())) for b in SMALL_BATCHES]
                + [(-1 / len(LARGE_BATCHES), list(found[b].values())) for b in LARGE_BATCHES])

    if arms(1):
        paper = paper_batch_effect()
        where: dict[str, list[str]] = defaultdict(list)  # how each batch size's runs were trained -> batch sizes
        for b in SMALL_BATCHES + LARGE_BATCHES:
            where[provenance(groups.get((b, "rbwa"), []) + groups.get((b, "sgd"), []))].append(b)
        trained = "" if len(where) == 1 else "; the batch sizes' runs were trained at " + "; ".join(
            f"{', '.join(bs)}: {how}" for how, bs in where.items())
        out.append(Finding("Claim 3: the gain is larger at batch sizes 16-64 than at 128-256",
                           "mean gain at 16-64 minus mean gain at 128-256", {}, {}, claimed=paper,
                           arms=(arms(1), arms(LAST_EPOCHS)), key=("claim 3",),
                           note=f"; paper: {paper:+.2f}; the batch sizes are independent runs, so this is a Welch "
                                f"contrast of their mean gains (Satterthwaite's degrees of freedom){trained}"))
    accuracy = {setting: list(measure(runs, "test_acc").values()) for (setting, label), runs in groups.items()
                if label == "rbwa"}
    if set(accuracy) == set(map(str, TABLE1)) and all(len(v) >= 2 for v in accuracy.values()):
        means = {b: mean_std(v)[0] for b, v in accuracy.items()}
        top = max(means, key=means.get)
        against = {b: contrast([(1.0, accuracy[top]), (-1.0, accuracy[b])]) for b in sorted(accuracy, key=int)
                   if b != top}
        level = [b for b, (_, lo, _, _) in against.items() if lo <= 0]
        out.append(f"Claim 3b: the best batch size for RBWA is 32 (paper): our highest mean final test accuracy is at "
                   f"{top} ({means[top]:.2f}%; " + ", ".join(f"{b}: {means[b]:.2f}%" for b in against)
                   + f"); {top} minus each other batch size (Welch 95% intervals, uncorrected): "
                   + "; ".join(f"{b}: {_ci(m, lo, hi)}" for b, (m, lo, hi, _) in against.items())
                   + (f". {top} is not distinguishable from {', '.join(level)}: these runs do not rank those batch "
                      "sizes." if level else f". {top} lies above every other batch size (uncorrected intervals)."))
    return out
