"""The weights of one average over a series of checkpoints (``rbwa merge``'s flags: SWA from a step, LAWA of the last
K, an EMA of a half-life, WSM's decay over a window, the power EMA), from :mod:`rbwa.averaging.weights`, each checked
against what the series is (its steps, their spacing, a checkpoint whose place is unknown)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rbwa.averaging.weights import (
    DECAY_SHAPES,
    ema_weights,
    lawa_weights,
    power_weights,
    sigma_rel,
    swa_weights,
    wsm_weights,
)
from rbwa.errors import UserError


def weights_of(steps: list[int | None], swa_from: int | None = None, lawa: int | None = None,
               ema_half_life: float | None = None, unordered: Path | None = None, wsm: tuple[str, int] | None = None,
               power_gamma: float | None = None) -> tuple[str, np.ndarray]:
    """The label and the weights over the series of one average (exactly one of them; ``wsm``: a decay shape and a
    window of K checkpoint intervals). ``unordered``: a checkpoint whose place in the series is unknown (no step),
    refused by every average but the uniform mean of the whole series, which any order gives. Pure but for errors."""
    n = len(steps)
    if sum(x is not None for x in (swa_from, lawa, ema_half_life, wsm, power_gamma)) != 1:
        raise UserError("choose one average: --swa-from STEP, --lawa K, --ema-half-life STEPS, --wsm SHAPE --window K "
                        "or --power-gamma G")
    if wsm is not None or power_gamma is not None:
        return _decay_merge(steps, unordered, wsm, power_gamma)
    if lawa is not None:
        if lawa < 1:
            raise UserError(f"--lawa K must be >= 1 (the last K checkpoints), got {lawa}")
        if lawa > n:
            raise UserError(f"--lawa {lawa}: the series holds {n} checkpoint{'s' * (n > 1)}")
        if unordered is not None and lawa < n:
            raise UserError(no_step(unordered))
        return f"LAWA, last {lawa} checkpoints", _evenly_spaced(steps, lawa_weights(list(range(n)), n, lawa))
    if unordered is not None:
        raise UserError(no_step(unordered))
    if any(s is None for s in steps):
        raise UserError("--swa-from and --ema-half-life need the step of every checkpoint, unknown here (--in-order "
                        "takes the order given, not steps); use --lawa K")
    if swa_from is not None:
        if swa_from < 0:
            raise UserError(f"--swa-from is a step, >= 0; got {swa_from}")
        first = next((i for i, s in enumerate(steps) if s >= swa_from), None)
        if first is None:
            raise UserError(f"--swa-from {swa_from}: the last checkpoint is at step {steps[-1]}")
        return f"SWA from step {steps[first]}", _evenly_spaced(steps, swa_weights(n, first))
    if not (math.isfinite(ema_half_life) and ema_half_life > 0):
        raise UserError(f"--ema-half-life must be a number of steps > 0, got {ema_half_life}")
    return f"EMA, half-life {ema_half_life:g} steps", ema_weights(steps, 0.5 ** (1 / ema_half_life), 0)


def _decay_merge(steps: list[int | None], unordered: Path | None, wsm: tuple[str, int] | None,
                 power_gamma: float | None) -> tuple[str, np.ndarray]:
    """WSM's merge of the last K intervals (evenly spaced: each interval one step of the decay), or the power EMA."""
    if unordered is not None:
        raise UserError(no_step(unordered))
    if wsm is not None:
        shape, k = wsm
        if shape not in DECAY_SHAPES:
            raise UserError(f"--wsm takes a decay shape: {', '.join(DECAY_SHAPES)}; got {shape!r}")
        if k is None or not 1 <= k < len(steps):
            raise UserError(f"--wsm needs --window K, the last K checkpoint intervals (K + 1 checkpoints): "
                            f"1 <= K < {len(steps)} here; got {k}")
        window = np.zeros(len(steps))
        window[len(steps) - k - 1:] = 1.0  # the k + 1 checkpoints of the k intervals, each one step of the decay
        _evenly_spaced(steps, window)
        return f"WSM {shape}, last {k} checkpoint intervals", wsm_weights(len(steps), k, shape)
    if any(s is None for s in steps) or not (math.isfinite(power_gamma) and power_gamma > 0) or not steps[-1] > 0:
        raise UserError(f"--power-gamma needs a number > 0 (got {power_gamma}) and the step of every checkpoint, the "
                        "last after step 0")
    return (f"power EMA, gamma {power_gamma:g} (sigma_rel {sigma_rel(power_gamma):.3f})",
            power_weights(steps, power_gamma))


def _evenly_spaced(steps: list[int | None], weights: np.ndarray) -> np.ndarray:
    """``weights`` when the checkpoints a uniform average uses are evenly spaced in steps (or their steps are
    unknown); refuses a series with a gap, whose uniform mean would weight the stretch around it less. Spacings one
    step apart are even: snapshots taken m times an epoch whose step count m does not divide fall on rounded steps
    (195, 391, 586, 782 at 782 steps and m = 4)."""
    used = [steps[i] for i in np.nonzero(weights)[0]]
    if None in used or len(used) < 3:
        return weights
    gaps = sorted({b - a for a, b in zip(used, used[1:])})
    if gaps[-1] - gaps[0] > 1:
        at = next(a for a, b in zip(used, used[1:]) if b - a == gaps[-1])
        raise UserError(f"the checkpoints this average uses are not evenly spaced (every {gaps[0]} steps, but "
                        f"{gaps[-1]} after step {at}): a uniform mean would weight that stretch less; add the missing "
                        "checkpoints, or use --ema-half-life, which weights by steps")
    return weights


def no_step(path: Path) -> str:
    return (f"{path}: no step recorded in it, nor one its name states unambiguously (checkpoint-N, step-N, or a "
            "single number), so its place in the series is unknown; name the checkpoints oldest first with --in-order "
            "(then only --lawa K applies), or leave it out")


