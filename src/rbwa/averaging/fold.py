"""Recurrent weight averaging: the fold rules and the optimizer wrapper.

The whole family of the paper is one mechanism: take a step with the base optimizer, then fold the
live weights ``W`` into an average and write the average back into ``W``:

    W_avg <- (1 - w_n) * W_avg + w_n * W ;  W <- W_avg

with the weight of the new snapshot ``w_n`` given by :func:`fold_weight`:

* ``average="mean"`` (RBWA, Eq. 2 of the paper): ``w_n = 1 / (n + 1)``, an equal-weight
  cumulative mean; ``n`` counts folds so far (``counter="folds"``, Eq. 2's reading) or complete
  epochs since the start (``counter="epochs"``, the other reading of line 7 of Algorithm 2).
* ``average="ema"`` (RBWA-E, Eq. 4): ``w_n = 1 - beta`` (``w_0 = 1``).

The average is folded every ``every`` steps and written back every ``write_back`` folds: 1 gives the
paper's family; ``None`` never writes back (SWA's and EMA's side average); ``steps_per_epoch`` with an
EMA every step is Switch EMA (Li et al. 2024). When every fold writes back, the next step starts from
the average, and folding is *exactly* the base optimizer with its
learning rate multiplied by ``w_n`` (PAPER.md, "What follows from the algebra"). The wrapper's
``implementation="lr_scale"`` uses that identity to run the same trajectory without a copy of the
weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from rbwa.averaging.dtensor import local

Average = Literal["mean", "ema"]
Counter = Literal["folds", "epochs"]

AVERAGES = ("mean", "ema")
AVERAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # those torch's lerp kernels take
COUNTERS = ("folds", "epochs")


def fold_weight(average: str, n: int, beta: float = 0.9) -> float:
    """Weight of the newest snapshot in the fold numbered ``n`` (0 = the first fold).

    The first fold always has weight 1: it takes the live weights as they are.
    """
    if n == 0:
        return 1.0
    if average == "mean":
        return 1.0 / (n + 1)
    return 1.0 - beta


def average_like(param: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new average of ``param``, starting at its value: in ``dtype``, else float32 for a bfloat16 or float16
    parameter (whose 1/(k+1) updates would round away), else the parameter's own dtype. A DTensor stays one."""
    if dtype is None:
        dtype = torch.float32 if param.dtype in (torch.bfloat16, torch.float16) else param.dtype
    return param.detach().to(dtype, copy=True)


@torch.no_grad()
def fold_(averages: Sequence[Tensor], params: Sequence[Tensor], weight: float, write_back: bool = True) -> None:
    """Fast path: ``avg <- avg + weight * (param - avg)``, then ``param <- avg`` if ``write_back`` (rounded to the
    parameter's dtype), over all tensors at once, on each process's local shards."""
    averages, params = local(averages), local(params)
    source = [p if p.dtype == a.dtype else p.to(a.dtype) for a, p in zip(averages, params, strict=True)]
    if weight == 1.0:
        torch._foreach_copy_(averages, source)
        return
    torch._foreach_lerp_(averages, source, weight)
    if write_back:
        torch._foreach_copy_(params, averages)


@torch.no_grad()
def fold_reference_(averages: Sequence[Tensor], params: Sequence[Tensor], weight: float,
                    write_back: bool = True) -> None:
    """Reference path of :func:`fold_`: one tensor at a time."""
    for avg, param in zip(local(averages), local(params), strict=True):
        if weight == 1.0:
            avg.copy_(param)
            continue
        avg.lerp_(param.to(avg.dtype), weight)
        if write_back:
            param.copy_(avg)


def fold_named(averages: dict[str, Tensor], counts: dict[str, int], params: Iterable[tuple[str, Tensor]],
               weight: Callable[[int], float], write_back: bool = True, dtype: torch.dtype | None = None) -> None:
    """Fold each named parameter into its own average and write the average back, unless ``write_back`` is False
    (the framework callbacks' fold; ``dtype``: the averages', as ``average_like`` chooses by default).

    Averages and their fold counts are keyed by the parameter's name, so the set of parameters may change between
    folds (a layer unfrozen mid-training): a parameter's first fold takes it as it is, wherever it joins, and
    each later fold has weight ``weight(count)``, ``count`` being that parameter's folds so far.
    """
    by_weight: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for name, p in params:
        if name not in averages:
            averages[name] = average_like(p, dtype)
        else:
            if averages[name].device != p.device:
                averages[name] = averages[name].to(p.device)
            avgs, ps = by_weight.setdefault(weight(counts[name]), ([], []))
            avgs.append(averages[name])
            ps.append(p)
        counts[name] = counts.get(name, 0) + 1
    for w, (avgs, ps) in by_weight.items():
        fold_(avgs, ps, w, write_back)


def check_start(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_fold_schedule(average: str, beta: float, every: int, counter: str) -> None:
    """The arguments every user of the fold rule shares (the wrapper and the Lightning callback)."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if counter not in COUNTERS:
        raise ValueError(f"counter must be one of {COUNTERS}, got {counter!r}")
    if counter == "epochs" and average != "mean":
        raise ValueError("counter='epochs' applies to average='mean' only")


def check_write_back(write_back: int | None) -> None:
    if write_back is not None and (not isinstance(write_back, int) or isinstance(write_back, bool) or write_back < 1):
        raise ValueError(f"write_back must be an integer >= 1 (folds between write-backs) or None, got {write_back!r}")




def check_average_dtype(average_dtype: object) -> None:
    """An average's dtype: None (float32 for low-precision weights, else theirs) or a floating torch.dtype."""
    if average_dtype is not None and average_dtype not in AVERAGE_DTYPES:
        raise ValueError(f"average_dtype must be None or a floating-point torch.dtype the fold runs in "
                         f"({', '.join(map(str, AVERAGE_DTYPES))}), got {average_dtype!r}")
