"""answers.py: a report's answers computed once, from findings held in memory (no runs, no files)."""

import math

import pytest

from rbwa.analysis.answers import cell, collect, marks_legend, plural, sentence, table
from rbwa.analysis.findings.core import Equivalence, Experiment, Finding
from rbwa.analysis.stats import paired_p


def finding(claim: str, diffs: list[float], key: tuple = (), **kw) -> Finding:
    return Finding(claim, "a - b", dict(enumerate(diffs)), {}, key=key, **kw)


def test_a_shared_test_is_one_row_and_holm_counts_each_test_once():
    fig3, variants = Experiment("fig3", "F", "model", "p"), Experiment("variants", "V", "model", "p")
    gain, loss, alone = finding("g", [1.0, 1.5, 2.0], ("acc",)), finding("l", [0.1, 0.3, 0.2], ("loss",)), \
        finding("v", [0.5, -0.5, 0.25])
    answers = collect([(fig3, [gain, loss, "a line"]), (variants, [finding("g again", [1.0, 1.5, 2.0], ("acc",)),
                                                                   alone])])
    assert [(a.number, a.experiment, a.finding.claim) for a in answers.rows.values()] == [
        (1, "fig3", "g"), (2, "fig3", "l"), (3, "variants", "v")]
    p = sorted([paired_p([1.0, 1.5, 2.0]), paired_p([0.1, 0.3, 0.2]), paired_p([0.5, -0.5, 0.25])])
    holm = [3 * p[0], max(3 * p[0], 2 * p[1]), max(3 * p[0], 2 * p[1], min(1.0, p[2]))]  # step-down, by hand
    assert sorted(a.p for a in answers.rows.values()) == pytest.approx(holm)
    assert answers.tests == 3 and answers.of(answers.sections[1][1][0]).number == 1


def test_sentences_name_rows_by_verdict_and_identities_by_whether_they_hold():
    exp = Experiment("controls", "C", "model", "p")
    strong, weak = finding("s", [5.0, 5.1, 4.9]), finding("w", [1.0, -1.0, 0.5])
    holds = Equivalence("rbwa = sgd on the harmonic LR", 3, 2000, 1, 0.0, "test images")
    fails = Equivalence("rbwa-e = sgd on rbwa-e's LR", 3, 2000, 52, 0.06, "test images", commits={0: "a against b"})
    answers = collect([(exp, [weak, strong, holds, fails])])
    assert sentence(exp, answers) == ("- **controls** (C): 2 questions; supported after Holm's correction: row 2; "
                                      "inconclusive: row 1; 1 of 2 identities within tolerance.")
    assert marks_legend(answers)[0].startswith("‡ In some seed the paired runs were trained at different commits")
    assert sentence(Experiment("empty", "E", "model", "p"), answers) == (
        "- **empty** (E): no questions answered yet (no finished pairs of runs to compare).")


def test_the_table_escapes_a_bar_and_shows_no_p_below_two_seeds():
    exp = Experiment("variants", "V", "model", "p")
    one = Finding("Does ema | fast beat sgd?", "ema | fast - sgd", {0: 2.0}, {})
    rows = table(collect([(exp, [one])]))
    assert rows[2] == ('| <a name="q1"></a>1 | Does ema \\| fast beat sgd? | ema \\| fast - sgd | +2.00 points | 1 | '
                       "- | inconclusive (fewer than 2 seeds) |")
    assert cell("a|b") == "a\\|b" and plural(1, "test") == "1 test" and plural(0, "test") == "0 tests"
    assert math.isnan(collect([(exp, [one])]).rows[id(one)].p)
