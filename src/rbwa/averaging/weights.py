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
