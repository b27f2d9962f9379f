"""A report's answers, computed once: every finding numbered, Holm's correction over the distinct tests, identities
apart (an equivalence is not a test). The sentences, the answers table, the forest figure and the appendix's details
all read the same :class:`Answers`, so no number reaches a report by a second path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rbwa.analysis.findings.core import LAST_EPOCHS, TEXT, Equivalence, Experiment, Finding, seeds_text
from rbwa.analysis.stats import NO_DIFFERENCE, OPPOSITE, SUPPORTED, category, holm, holm_verdict, mean_ci

Item = Finding | Equivalence | str
MACHINE, COMMIT = "†", "‡"  # marks on the answers whose paired runs differ in machine, or in commit, in some seed


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(lo):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def cell(text: str) -> str:
    """Text for a markdown table cell: a '|' of a method's label escaped, so it cannot split the row."""
    return text.replace("|", "\\|")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def marks(item: Finding | Equivalence) -> str:
    """The marks of an answer or identity: † where its pairs' machines differ in some seed, ‡ where their commits do."""
    return MACHINE * bool(item.machines) + COMMIT * bool(item.commits)


def test_key(f: Finding) -> tuple | int:
    """What a finding tests, for Holm's family: its metric and runs, or the finding itself where it has no key."""
    return f.key or id(f)


@dataclass(frozen=True, eq=False)
class Answer:
    """One distinct test: its row number, the experiment that asks it first, the finding, its Holm-adjusted p."""

    number: int
    experiment: str
    finding: Finding
    p: float

    @property
    def verdict(self) -> str:
        f = self.finding
        return holm_verdict(f.stats("final")[0], self.p, f.same, n=f.stats("final")[3])

    @property
    def settled(self) -> bool:
        """Whether Holm's correction settles it: supported, or the opposite holds."""
        return self.verdict in (SUPPORTED, OPPOSITE)

    @property
    def marks(self) -> str:
        return marks(self.finding)


@dataclass(frozen=True)
class Answers:
    """Every experiment's items in report order, and the distinct tests among them, numbered."""

    sections: list[tuple[Experiment, list[Item]]]
    rows: dict[tuple | int, Answer]  # test key -> its answer

    @property
    def tests(self) -> int:
        """How many tests Holm's correction covers (those with a p-value)."""
        return sum(not math.isnan(a.p) for a in self.rows.values())

    def of(self, f: Finding) -> Answer:
        return self.rows[test_key(f)]

    def items(self, kind: type) -> Iterator[tuple[Experiment, Item]]:
        for exp, items in self.sections:
            yield from ((exp, item) for item in items if isinstance(item, kind))


def collect(sections: list[tuple[Experiment, list[Item]]]) -> Answers:
    """Number the distinct tests in report order (a comparison two experiments share, the same runs, is one) and
    adjust their p-values by Holm's step-down over all of them."""
    first: dict[tuple | int, tuple[str, Finding]] = {}
    for exp, items in sections:
        for f in items:
            if isinstance(f, Finding):
                first.setdefault(test_key(f), (exp.name, f))
    adjusted = holm([f.p for _, f in first.values()])
    rows = {key: Answer(i + 1, name, f, p) for i, ((key, (name, f)), p) in enumerate(zip(first.items(), adjusted))}
    return Answers(sections, rows)


def _rows_text(numbers: list[int]) -> str:
    return f"row{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))}"


def sentence(exp: Experiment, answers: Answers) -> str | None:
    """One sentence for an experiment's questions: which rows hold after Holm's correction, which contradict the
    claim, which stay open; and whether its identities hold."""
    mine = list(dict.fromkeys(answers.of(f) for e, f in answers.items(Finding) if e is exp))
    same = [q for e, q in answers.items(Equivalence) if e is exp]
    if not mine and not same:
        return f"- **{exp.name}** ({exp.title}): no questions answered yet (no finished pairs of runs to compare)."
    parts = []
    for label, test in (("supported after Holm's correction", lambda v: v == SUPPORTED),
                        ("the opposite holds", lambda v: v == OPPOSITE),
                        ("no difference in any seed", lambda v: v == NO_DIFFERENCE),
                        ("inconclusive", lambda v: category(v) == "inconclusive")):
        numbers = sorted(a.number for a in mine if test(a.verdict))
        if numbers:
            parts.append(f"{label}: {_rows_text(numbers)}")
    if same:
        held = sum(q.holds for q in same)
        parts.append(f"{held} of {len(same)} identit{'y' if len(same) == 1 else 'ies'} within tolerance")
    return f"- **{exp.name}** ({exp.title}): {plural(len(mine), 'question')}; " + "; ".join(parts) + "."


def table(answers: Answers) -> list[str]:
    """The answers table: one row per distinct test, with an anchor (``#qN``) to link to."""
    out = ["| # | question | difference | effect [95% CI] | n | p (Holm) | verdict after Holm's correction |",
           "|---|---|---|---|---|---|---|"]
    for a in answers.rows.values():
        f = a.finding
        mean, lo, hi, n = f.stats("final")
        p = "-" if math.isnan(a.p) else f"{a.p:.3g}"
        out.append(f"| <a name=\"q{a.number}\"></a>{a.number}{a.marks} | {cell(f.claim)} | {cell(f.what)} | "
                   f"{fmt_ci(mean, lo, hi, f.digits)}{f.unit} | {n} | {p} | {a.verdict} |")
    return out


def marks_legend(answers: Answers) -> list[str]:
    """What † and ‡ mean, for the marks the answers or the identities carry."""
    found = "".join(a.marks for a in answers.rows.values()) + "".join(marks(q) for _, q in answers.items(Equivalence))
    lines = []
    if MACHINE in found:
        lines.append(f"{MACHINE} In some seed the paired runs recorded different CPU kinds or thread counts: float "
                     "rounding adds to the difference, and across CPU kinds nominally identical runs can end points "
                     "apart, so pairing by seed means little there (the appendix names the seeds).")
    if COMMIT in found:
        lines.append(f"{COMMIT} In some seed the paired runs were trained at different commits (the provenance table "
                     "names each group's).")
    return lines


def equivalences(answers: Answers) -> list[str]:
    """The identities: the largest gap at any epoch of any seed against the tolerance, not a test; beside it the
    final-epoch accuracy difference, and the marks and diverged seeds that explain a failed one."""
    found = [q for _, q in answers.items(Equivalence)]
    if not found:
        return []
    out = ["Identities (an equivalence, not a test, so outside Holm's correction): the largest gap between the two "
           "runs at any epoch of any seed; seeds marked as in the answers table.", "",
           "| identity | seeds | largest gap in items predicted correctly | tolerance | largest gap in test loss | "
           "final test accuracy difference [95% CI] | seeds marked † / ‡ | holds |",
           "|---|---|---|---|---|---|---|---|"]
    for i, q in enumerate(found, 1):
        seeds = " / ".join(", ".join(map(str, sorted(d))) or "-" for d in (q.machines, q.commits))
        holds = "yes" if q.holds else "**no**" + (f" (diverged in {seeds_text(q.diverged)})" if q.diverged else "")
        out.append(f"| <a name=\"i{i}\"></a>{cell(q.claim)}{marks(q)} | {q.seeds} | {q.item_gap} of {q.items:,} "
                   f"{q.kind} | {q.item_tolerance} | {q.loss_gap:.2g} nats | "
                   f"{fmt_ci(*mean_ci(list(q.final.values())), 4 if q.kind == TEXT else 2)} points | {seeds} | "
                   f"{holds} |")
    return out


def detail_table(answers: Answers) -> list[str]:
    """The appendix's table: per answer what the answers table leaves out (the uncorrected verdict, the second
    measure, the largest gap over the curve, the seeds behind a mark)."""
    if not answers.rows:
        return []
    return [f"| # | final epoch, uncorrected | mean of the last {LAST_EPOCHS} epochs | largest gap at any epoch "
            f"(tolerance) | seeds marked {MACHINE} | seeds marked {COMMIT} |", "|---|---|---|---|---|---|",
            *map(_detail, answers.rows.values())]


def details(exp: Experiment, answers: Answers, items: list[Item]) -> list[str]:
    """An experiment's plain lines for the appendix (the choices made per seed, ties), with the questions another
    experiment's row answers."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(f"- {item}")
        elif isinstance(item, Finding) and (a := answers.of(item)).finding is not item:
            out.append(f"- {item.claim}: the same test as row {a.number} (the same runs); final epoch, uncorrected: "
                       f"{item.verdict('final')}{item.note}.")
    return out


def _detail(a: Answer) -> str:
    f = a.finding
    final = f"{f.verdict('final')}{f.note}"
    if f.last or f.arms is not None:
        mean5, lo5, hi5, _ = f.stats("last")
        disagree = category(f.verdict("final")) != category(f.verdict("last"))
        last = f"{f.verdict('last')}, {fmt_ci(mean5, lo5, hi5, f.digits)}{' (**the two disagree**)' * disagree}"
    else:
        last = "- (the end of training only)"
    gap = (f"{max(abs(d) for d in f.curve):.{f.digits}g}{f.unit} ({f.tolerance:.{f.digits}g})"
           if f.curve and (f.show_curve or f.same) else "-")
    seeds = [", ".join(map(str, sorted(s))) or "-" for s in (f.machines, f.commits)]
    return f"| {a.number} | {final} | {last} | {gap} | {seeds[0]} | {seeds[1]} |"


def forest(answers: Answers, path: Path) -> Path | None:
    """Every answer's paired difference with its 95% interval, grouped by experiment and unit; filled where Holm's
    correction settles it."""
    from rbwa.analysis.plots import plot_forest

    groups: dict[tuple[str, str], list[tuple[str, float, float, float, bool]]] = {}
    for a in answers.rows.values():
        f = a.finding
        mean, lo, hi, _ = f.stats("final")
        if math.isnan(mean):
            continue
        unit = f.unit.strip() or "loss: the other's minus this one's"
        where = f" ({f.claim.split(':')[0]})" if ":" in f.claim else ""  # the setting, which `what` leaves out
        label = f"{a.number}. {f.what}{where}"
        groups.setdefault((a.experiment, unit), []).append((label if len(label) <= 60 else label[:59] + "…", mean,
                                                            lo, hi, a.settled))
    if not groups:
        return None
    return plot_forest([(f"{name} ({unit})", rows) for (name, unit), rows in groups.items()], path)
