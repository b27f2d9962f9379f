"""Small statistics for the report: mean, std, t intervals, paired tests, Holm's correction, verdicts. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

NAN = float("nan")


def t975(df: float) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (any df > 0, as Welch's are)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1; NaN for one value) and n."""
    n = len(values)
    if n == 0:
        return NAN, NAN, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else NAN
    return mean, std, n


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t confidence interval (NaN bounds for fewer than 2 values, or for values all equal and not 0:
    no spread to estimate an interval from; all 0 is the interval [0, 0])."""
    mean, std, n = mean_std(values)
    if n < 2 or (std == 0 and mean != 0):
        return mean, NAN, NAN
    half = t975(n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, float, int]:
    """Mean of a[seed] - b[seed] over the seeds both have, its 95% CI, and the number of pairs."""
    seeds = sorted(set(a) & set(b))
    mean, lo, hi = mean_ci([a[s] - b[s] for s in seeds])
    return mean, lo, hi, len(seeds)


def paired_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (NaN for fewer than 2)."""
    from scipy.stats import t

    mean, std, n = mean_std(differences)
    if n < 2:
        return NAN
    if std == 0:  # every difference the same: none at all is no evidence (1); another, no test (the t is undefined)
        return 1.0 if mean == 0 else NAN
    return float(2 * t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


def contrast(arms: Sequence[tuple[float, Sequence[float]]]) -> tuple[float, float, float, float]:
    """A weighted sum of the means of independent groups, sum_i c_i mean_i, with its 95% interval and two-sided
    p-value (that the sum is 0) from Welch's t with Satterthwaite's degrees of freedom; ``arms``: (c_i, the group's
    values). NaN bounds and p where a group has fewer than 2 values."""
    from scipy.stats import t

    if not arms or any(len(values) < 2 for _, values in arms):
        estimate = sum(c * mean_std(list(v))[0] for c, v in arms) if arms else NAN
        return estimate, NAN, NAN, NAN
    parts = [(c, *mean_std(list(values))) for c, values in arms]
    estimate = sum(c * mean for c, mean, _, _ in parts)
    terms = [c * c * std * std / n for c, _, std, n in parts]
    variance = sum(terms)
    if variance == 0:  # no spread in any group: no interval and no test, unless the sum is 0 (no evidence)
        return (estimate, estimate, estimate, 1.0) if estimate == 0 else (estimate, NAN, NAN, NAN)
    df = variance ** 2 / sum(term ** 2 / (n - 1) for term, (_, _, _, n) in zip(terms, parts))
    half = t975(df) * math.sqrt(variance)
    return estimate, estimate - half, estimate + half, float(2 * t.sf(abs(estimate) / math.sqrt(variance), df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes max over j <= i of (m - j + 1) p_(j),
    capped at 1. NaN p-values (too few seeds to test) stay NaN and do not count in m."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [NAN] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def within(differences: Sequence[float], tolerance: float) -> bool:
    """Whether every difference (one per seed and epoch) is at most ``tolerance`` in size: the 'no difference' rule."""
    return len(differences) > 0 and max(abs(d) for d in differences) <= tolerance


def category(text: str) -> str:
    """A verdict's category, for comparing two verdicts: supported, not supported, or inconclusive."""
    return text.split(" (")[0].replace(" at this scale", "").replace(" after correction", "")


# Every verdict the reports can print, each reached from the numbers by one branch below ({claimed}: the paper's).
SUPPORTED = "supported"
OPPOSITE = "not supported (the opposite holds)"
NO_DIFFERENCE = "not supported (no difference in any seed)"
BELOW_PAPER = "not supported (the paper's difference of {claimed:+.3g} lies above our 95% CI)"
INCONCLUSIVE = "inconclusive at this scale"
TOO_FEW = "inconclusive at this scale (fewer than 2 seeds)"
NO_SPREAD = "inconclusive at this scale (every seed's difference is the same: no spread to estimate an interval from)"
INCONCLUSIVE_HOLM = "inconclusive after correction"
TOO_FEW_HOLM = "inconclusive (fewer than 2 seeds)"
NO_SPREAD_HOLM = "inconclusive (no spread between seeds: not tested)"
VERDICTS = (SUPPORTED, OPPOSITE, NO_DIFFERENCE, BELOW_PAPER, INCONCLUSIVE, TOO_FEW, NO_SPREAD, INCONCLUSIVE_HOLM,
            TOO_FEW_HOLM, NO_SPREAD_HOLM)


def holm_verdict(mean: float, p_adjusted: float, same: bool = False, alpha: float = 0.05, n: int = 0) -> str:
    """A claim that the difference is positive, judged from its Holm-adjusted two-sided p-value (none: fewer than 2
    seeds, or ``n`` >= 2 seeds whose differences are all equal)."""
    if same:
        return NO_DIFFERENCE
    if math.isnan(p_adjusted):
        return NO_SPREAD_HOLM if n >= 2 else TOO_FEW_HOLM
    if p_adjusted < alpha:
        return SUPPORTED if mean > 0 else OPPOSITE
    return INCONCLUSIVE_HOLM


def verdict(lo: float, hi: float, claimed: float | None = None, same: bool = False, n: int = 0) -> str:
    """A claim that the difference is positive, judged from its 95% CI.

    not supported (no difference): ``same``, i.e. the two curves agree within the stated tolerance at
    every epoch of every seed (``within``). supported: the CI lies above 0. not supported: it lies below
    0, or lies below the paper's own gain (``claimed``) while including 0. Otherwise, with fewer than 2 seeds, or
    with ``n`` >= 2 seeds whose differences are all equal (no interval): inconclusive.
    """
    if same:
        return NO_DIFFERENCE
    if math.isnan(lo) or math.isnan(hi):
        return NO_SPREAD if n >= 2 else TOO_FEW
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return OPPOSITE
    if claimed is not None and hi < claimed:
        return BELOW_PAPER.format(claimed=claimed)
    return INCONCLUSIVE
