import math

import pytest

from rbwa.analysis.stats import (
    category,
    contrast,
    holm,
    holm_verdict,
    mean_ci,
    mean_std,
    paired_difference,
    paired_p,
    t975,
    verdict,
    within,
)


def test_mean_std_by_hand():
    mean, std, n = mean_std([1.0, 2.0, 6.0])
    assert (mean, n) == (3.0, 3) and std == pytest.approx(math.sqrt(7.0))  # ((4 + 1 + 9) / 2) ** 0.5
    assert math.isnan(mean_std([5.0])[1]) and mean_std([])[2] == 0


def test_mean_ci_by_hand():
    mean, lo, hi = mean_ci([1.0, 2.0, 6.0])
    half = 4.302653 * math.sqrt(7.0) / math.sqrt(3)
    assert (mean, lo, hi) == (3.0, pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    assert math.isnan(mean_ci([1.0])[1])
    # exact quantiles (printed tables round them): 12.7062, 4.30265, 1.98397; any positive df, as Welch's
    assert t975(1) == pytest.approx(12.7062, abs=1e-4) and t975(2) == pytest.approx(4.30265, abs=1e-5)
    assert t975(100) == pytest.approx(1.98397, abs=1e-5) and t975(2.5) < t975(2)


def test_paired_difference_uses_common_seeds():
    a = {0: 81.0, 1: 82.0, 2: 83.0, 3: 99.0}
    b = {0: 80.0, 1: 80.0, 2: 80.0}
    mean, lo, hi, n = paired_difference(a, b)  # differences 1, 2, 3
    assert (mean, n) == (2.0, 3)
    assert lo == pytest.approx(2.0 - 4.302653 / math.sqrt(3)) and hi == pytest.approx(2.0 + 4.302653 / math.sqrt(3))


def test_verdicts():
    assert verdict(0.1, 2.0) == "supported"
    assert verdict(-2.0, -0.1).startswith("not supported (the opposite")
    assert verdict(-0.5, 0.6, claimed=1.38).startswith("not supported (the paper's difference of +1.38")
    assert verdict(-0.5, 2.0, claimed=1.38) == "inconclusive at this scale"
    assert verdict(float("nan"), float("nan")).startswith("inconclusive")
    # "no difference" comes from the tolerance rule over whole curves, never from an exact 0 at one epoch
    assert verdict(0.0, 0.0) == "inconclusive at this scale"
    assert verdict(-0.01, 0.02, same=True) == "not supported (no difference in any seed)"


def test_paired_p_by_hand():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.4641 with 2 degrees of freedom; the t(2) CDF has the
    # closed form 1/2 + t / (2 sqrt(t^2 + 2)), so p = 1 - t / sqrt(t^2 + 2) = 1 - 3.4641 / sqrt(14)
    assert paired_p([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(12) / math.sqrt(14))
    assert paired_p([0.0, 0.0]) == 1.0 and math.isnan(paired_p([1.0]))
    # every difference the same and not 0 (two seeds each 80 test images better): no spread, so no test and no
    # interval (a t-test would claim p = 0)
    assert math.isnan(paired_p([0.8, 0.8])) and math.isnan(mean_ci([0.8, 0.8])[1])


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 (m = 4): 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, 2 x 0.03 = 0.06, 1 x 0.04 -> 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1, monotone, NaN left out of m
    adjusted = holm([0.5, float("nan"), 0.01])
    assert adjusted[0] == 0.5 and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([]) == []


def test_holm_verdicts_and_categories():
    assert holm_verdict(1.0, 0.049) == "supported" and holm_verdict(-1.0, 0.01).endswith("(the opposite holds)")
    assert holm_verdict(1.0, 0.06) == "inconclusive after correction"
    assert holm_verdict(0.0, 1.0, same=True).endswith("(no difference in any seed)")
    assert category("inconclusive at this scale") == category("inconclusive after correction") == "inconclusive"
    assert category("not supported (the opposite holds)") == "not supported"


def test_tolerance_rule():
    assert within([0.0, -0.05, 0.05], 0.05) and not within([0.0, 0.051], 0.05) and not within([], 1.0)


def test_every_verdict_is_reached_from_numbers_and_none_is_typed_elsewhere():
    from pathlib import Path

    from rbwa.analysis import stats

    nan = float("nan")
    reached = {verdict(0.1, 2.0), verdict(-2.0, -0.1), verdict(0.0, 0.0, same=True), verdict(-0.5, 0.6, 1.38),
               verdict(-0.5, 2.0), verdict(nan, nan), verdict(nan, nan, n=2), holm_verdict(1.0, 0.2),
               holm_verdict(1.0, nan), holm_verdict(0.8, nan, n=2),
               holm_verdict(1.0, 0.01), holm_verdict(-1.0, 0.01), holm_verdict(0.0, 1.0, same=True)}
    expected = {v.format(claimed=1.38) for v in stats.VERDICTS}
    assert reached == expected
    # the report derives and renders verdicts, it does not word them
    here = Path(stats.__file__).parent
    for module in [*sorted(p.relative_to(here) for p in (here / "findings").glob("*.py")), "report.py"]:
        text = (here / module).read_text()
        for v in stats.VERDICTS:
            if v != stats.SUPPORTED and v != stats.INCONCLUSIVE:  # words the report's rule text uses too
                assert v.split("{")[0] not in text, (module, v)


def test_a_contrast_of_two_independent_groups_is_welchs_t_test_by_hand():
    """a = 1, 2, 3 (mean 2, var 1), b = 4, 6, 8 (mean 6, var 4): the difference -4, standard error
    sqrt(1/3 + 4/3), Satterthwaite's df (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2)."""
    from scipy.stats import t, ttest_ind

    estimate, lo, hi, p = contrast([(1.0, [1.0, 2.0, 3.0]), (-1.0, [4.0, 6.0, 8.0])])
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((1 / 9 + 16 / 9) / 2)
    assert estimate == -4.0 and df == pytest.approx(2.9411764)
    assert (lo, hi) == (pytest.approx(-4.0 - t.ppf(0.975, df) * se), pytest.approx(-4.0 + t.ppf(0.975, df) * se))
    assert p == pytest.approx(ttest_ind([1, 2, 3], [4, 6, 8], equal_var=False).pvalue)
    # weights: the mean of two groups minus a third
    estimate, *_ = contrast([(0.5, [1.0, 3.0]), (0.5, [5.0, 7.0]), (-1.0, [0.0, 2.0])])
    assert estimate == 0.5 * 2 + 0.5 * 6 - 1
    assert math.isnan(contrast([(1.0, [1.0]), (-1.0, [2.0, 3.0])])[1])
