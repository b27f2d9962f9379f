"""Small statistics for the report: mean, std, t confidence intervals, paired differences, verdicts. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# two-sided 95% quantiles of Student's t, for 1..30 degrees of freedom; the normal 1.96 beyond
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
NAN = float("nan")


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1; NaN for one value) and n."""
    n = len(values)
    if n == 0:
        return NAN, NAN, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else NAN
    return mean, std, n


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t confidence interval (NaN bounds for fewer than 2 values)."""
    mean, std, n = mean_std(values)
    if n < 2:
        return mean, NAN, NAN
    half = t975(n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, float, int]:
    """Mean of a[seed] - b[seed] over the seeds both have, its 95% CI, and the number of pairs."""
    seeds = sorted(set(a) & set(b))
    mean, lo, hi = mean_ci([a[s] - b[s] for s in seeds])
    return mean, lo, hi, len(seeds)


def verdict(lo: float, hi: float, claimed: float | None = None) -> str:
    """A claim that the difference is positive, judged from its 95% CI.

    supported: the CI lies above 0. not supported: it lies below 0, or is exactly 0 (identical in every
    seed), or lies below the paper's own gain (``claimed``) while including 0. Otherwise, or with fewer
    than 2 seeds: inconclusive.
    """
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive at this scale (fewer than 2 seeds)"
    if lo == hi == 0:
        return "not supported (no difference in any seed)"
    if lo > 0:
        return "supported"
    if hi < 0:
        return "not supported (the opposite holds)"
    if claimed is not None and hi < claimed:
        return f"not supported (the paper's difference of {claimed:+.3g} lies above our 95% CI)"
    return "inconclusive at this scale"
