import math

import pytest

from rbwa.stats import mean_ci, mean_std, paired_difference, t975, verdict


def test_mean_std_by_hand():
    mean, std, n = mean_std([1.0, 2.0, 6.0])
    assert (mean, n) == (3.0, 3) and std == pytest.approx(math.sqrt(7.0))  # ((4 + 1 + 9) / 2) ** 0.5
    assert math.isnan(mean_std([5.0])[1]) and mean_std([])[2] == 0


def test_mean_ci_by_hand():
    mean, lo, hi = mean_ci([1.0, 2.0, 6.0])
    half = 4.303 * math.sqrt(7.0) / math.sqrt(3)
    assert (mean, lo, hi) == (3.0, pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    assert math.isnan(mean_ci([1.0])[1])
    assert t975(1) == 12.706 and t975(100) == 1.96


def test_paired_difference_uses_common_seeds():
    a = {0: 81.0, 1: 82.0, 2: 83.0, 3: 99.0}
    b = {0: 80.0, 1: 80.0, 2: 80.0}
    mean, lo, hi, n = paired_difference(a, b)  # differences 1, 2, 3
    assert (mean, n) == (2.0, 3)
    assert lo == pytest.approx(2.0 - 4.303 * 1.0 / math.sqrt(3)) and hi == pytest.approx(2.0 + 4.303 / math.sqrt(3))


def test_verdicts():
    assert verdict(0.1, 2.0) == "supported"
    assert verdict(-2.0, -0.1).startswith("not supported (the opposite")
    assert verdict(-0.5, 0.6, claimed=1.38).startswith("not supported (the paper's difference of +1.38")
    assert verdict(-0.5, 2.0, claimed=1.38) == "inconclusive at this scale"
    assert verdict(float("nan"), float("nan")).startswith("inconclusive")
    assert verdict(0.0, 0.0) == "not supported (no difference in any seed)"
