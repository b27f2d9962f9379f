"""Post-hoc weights over a series of checkpoints, and the one combine: the home that ``rbwa posthoc``, ``rbwa merge``
and the Python candidates API all draw on.

A series is a run's checkpoints in order of the optimizer steps they were taken after (``steps``). Each average is a
vector of weights over it, summing to 1: SWA (uniform from a start), LAWA (uniform over the last k of a set of
checkpoints), an EMA (by steps). :func:`combine` forms the weighted mean, one checkpoint at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor


def swa_weights(n: int, start: int) -> np.ndarray:
    """Uniform over snapshots ``start``..``n - 1``. Pure."""
    w = np.zeros(n)
    w[start:] = 1.0 / (n - start)
    return w


def lawa_weights(epoch_ends: list[int], n: int, k: int) -> np.ndarray:
    """Uniform over the last ``k`` of the snapshots at indices ``epoch_ends`` (those taken at an epoch's end)."""
    w = np.zeros(n)
    w[epoch_ends[-k:]] = 1.0 / k
    return w


def ema_weights(steps: list[int], decay: float, start: int) -> np.ndarray:
    """The EMA of the snapshot series from index ``start`` (taken as it is), with ``decay`` per step: each
    snapshot enters with weight 1 - decay^g, g its distance in steps from the previous one. Pure."""
    w = np.zeros(len(steps))
    w[start] = 1.0
    for j in range(start + 1, len(steps)):
        kept = decay ** (steps[j] - steps[j - 1])
        w *= kept
        w[j] += 1.0 - kept
    return w


def combine(read: Callable[[int], dict[str, Tensor]], weights: Sequence[float],
            dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The weighted mean of a series of state dicts, ``read(i)`` giving the i-th, read one at a time and never for a
    weight of 0, so memory holds one checkpoint and a float64 accumulator whatever the series' length. Each
    floating-point tensor is accumulated in float64 and returned in ``dtype`` (default: its own); every other tensor
    (a step counter, ``num_batches_tracked``) as the last checkpoint read holds it."""
    used = [i for i, w in enumerate(weights) if w]
    if not used:
        raise ValueError("every weight is 0: nothing to average")
    out: dict[str, Tensor] = {}  # float64 totals, and the other tensors as last read, in the series' order
    dtypes: dict[str, torch.dtype] = {}
    for i in used:
        for name, t in read(i).items():
            if not t.is_floating_point():
                out[name] = t.clone()
                continue
            dtypes[name] = dtype or t.dtype
            if name not in out:
                out[name] = torch.zeros_like(t, dtype=torch.float64)
            out[name] += float(weights[i]) * t.double()
    return {name: t.to(dtypes[name]) if name in dtypes else t for name, t in out.items()}


# ---- WSM: a decay merged from a constant-LR run's checkpoints (Tian et al., ICLR 2026, arXiv 2507.17634) ----
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def decay_sequence(shape: str, k: int) -> np.ndarray:
    """The learning-rate factor w_1 >= ... >= w_k of each of the last ``k`` updates under a decay of ``shape`` over
    them: at the start of update i a fraction x = (i - 1) / k of the decay has passed, and w = 1 - x (linear, as
    ``--lr-schedule wsd``'s factor (total - step) / decay), (1 + cos(pi x)) / 2 (cosine) or 1 - sqrt(x). Pure."""
    if shape not in DECAY_SHAPES:
        raise ValueError(f"decay shape must be one of {', '.join(DECAY_SHAPES)}, got {shape!r}")
    x = np.arange(k) / k
    return {"linear": 1.0 - x, "cosine": 0.5 * (1.0 + np.cos(np.pi * x)), "1-sqrt": 1.0 - np.sqrt(x)}[shape]


def wsm_weights(n: int, k: int, shape: str) -> np.ndarray:
    """WSM's merge of the last ``k`` updates of a series of ``n`` checkpoints (``k`` < ``n``). Pure.

    Let theta_0, ..., theta_k be the last k + 1 checkpoints and g_i = theta_(i-1) - theta_i the update between two
    of them at the constant learning rate. Taking those updates again from theta_0, each scaled by the decay's factor
    w_i (:func:`decay_sequence`), ends at

        theta_0 - sum_i w_i g_i = (1 - w_1) theta_0 + sum_(j=1..k-1) (w_j - w_(j+1)) theta_j + w_k theta_k,

    a weighted mean of the checkpoints (the coefficients sum to 1, and are >= 0 for a decreasing w). Where the
    updates do not depend on the weights (a loss linear in them), this merge *is* the run with that decay over the
    last k checkpoint intervals (the factor constant within each interval); elsewhere it is WSM's approximation of
    it. A linear decay gives the uniform mean of the last k checkpoints (w_1 = 1, w_j - w_(j+1) = 1/k).
    """
    if not 1 <= k < n:
        raise ValueError(f"a WSM window of k updates needs k + 1 checkpoints: 1 <= k < {n}, got {k}")
    w = decay_sequence(shape, k)
    c = np.zeros(n)
    c[n - k - 1] = 1.0 - w[0]
    c[n - k:n - 1] = w[:-1] - w[1:]
    c[n - 1] = w[-1]
    return c


# ---- the power-function EMA of EDM2 (Karras et al. 2024) ----
def power_weights(steps: Sequence[int], gamma: float) -> np.ndarray:
    """EDM2's power-function EMA at the last snapshot of a series taken after ``steps`` steps, which weights the
    weights after step tau in proportion to tau^gamma. Pure.

    EDM2's online update, avg <- beta_t avg + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1), gives the
    weights after step tau (1 <= tau <= t) the weight (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1). A snapshot
    at step s_j stands for the steps s_(j-1) < tau <= s_j (s_0 = 0: the first stands for everything before it), so its
    weight is (s_j^(gamma+1) - s_(j-1)^(gamma+1)) / s_n^(gamma+1): with a snapshot after every step, the online
    power EMA exactly.
    """
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"the power EMA's exponent gamma must be a number > 0, got {gamma!r}")
    if not steps[-1] > 0:
        raise ValueError(f"the power EMA weights the steps taken: its last snapshot must come after step 0, got "
                         f"{steps[-1]}")
    s = np.asarray(steps, dtype=float) / float(steps[-1])
    e = gamma + 1.0
    return s ** e - np.concatenate([[0.0], s[:-1]]) ** e


def sigma_rel(gamma: float) -> float:
    """EDM2's relative width of a power EMA: its standard deviation over its length, sqrt((g+1) / ((g+2)^2 (g+3)))."""
    return float(np.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0))))
