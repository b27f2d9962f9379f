"""Post-hoc averages of any trainer's checkpoints (``rbwa merge``): SWA, LAWA or an EMA of a series of checkpoints
as users have them, written back in the format they came in, loadable without rbwa.

The series and its format come from :mod:`~rbwa.checkpoints.series`, the weights of each average from
:mod:`~rbwa.checkpoints.averages`; :mod:`rbwa.averaging.weights`'s streaming ``combine`` reads one checkpoint at a
time (and none of weight 0): memory holds one checkpoint and a float64 accumulator whatever the series' length.
Floating-point tensors are averaged in float64 and written in their own dtype; others (step counters,
``num_batches_tracked``) are the last checkpoint's. The result is written to a temporary beside ``out`` and renamed
when complete. BatchNorm running statistics are averaged like any float tensor, which is not what the averaged
weights would gather: :func:`reestimate_bn` re-estimates them on data you give.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rbwa.averaging.weights import combine
from rbwa.checkpoints.series import Checkpoint, Series, find
from rbwa.errors import UserError


def reader(series: Series) -> Callable[[int], dict[str, Tensor]]:
    """``read(i)``: the i-th checkpoint's tensors, refused in one line where they are not the first read's model
    (other names, shapes or dtypes)."""
    first: dict[str, Any] = {}

    def read(i: int) -> dict[str, Tensor]:
        path = series.checkpoints[i].path
        found = series.format.read(path)
        if not first:
            first.update(path=path, shapes={n: (tuple(t.shape), t.dtype) for n, t in found.items()})
        _same_model(found, path, first["shapes"], first["path"])
        return found
    return read


def _same_model(found: dict[str, Tensor], path: Path, shapes: dict[str, tuple], reference: Path) -> None:
    if set(found) != set(shapes):
        extra = sorted(set(found) ^ set(shapes))
        raise UserError(f"{path} holds other tensors than {reference} ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): not checkpoints of one model")
    for name, t in found.items():
        if (tuple(t.shape), t.dtype) != shapes[name]:
            shape, dtype = shapes[name]
            raise UserError(f"{path}: {name} is {tuple(t.shape)} {t.dtype}, but {shape} {dtype} in {reference}: not "
                            "checkpoints of one model")


def candidates(paths: list[str | Path], swa_from: list[int] = (), lawa: list[int] = (),
               ema_half_life: list[float] = (), in_order: bool = False, wsm: list[tuple[str, int]] = (),
               power_gamma: list[float] = ()) -> dict[str, dict[str, Tensor]]:
    """Every average asked for, by label, as a state dict of the checkpoints' tensors: evaluate each with your own
    data and code (re-estimate BatchNorm with :func:`reestimate_bn` first) and keep the best. Streams: each average
    reads its checkpoints one at a time (the series is read once per average), so memory holds the averages made
    and one checkpoint."""
    series = find(paths, in_order)
    asked = ([{"swa_from": s} for s in swa_from] + [{"lawa": k} for k in lawa]
             + [{"ema_half_life": h} for h in ema_half_life] + [{"wsm": tuple(x)} for x in wsm]
             + [{"power_gamma": g} for g in power_gamma])
    averages = [series.weights(**kw) for kw in asked]  # every one checked before any is made
    return {label: combine(reader(series), w) for label, w in averages}


def reestimate_bn(model: torch.nn.Module, state: dict[str, Tensor], batches: Iterable,
                  device: torch.device | str | None = None) -> dict[str, Tensor]:
    """``state`` (an average, from :func:`candidates` or a merged file) with its BatchNorm running statistics
    re-estimated on ``batches`` (inputs, or tuples whose first item is the input), as the averaged weights would
    gather them: ``torch.optim.swa_utils.update_bn`` on a copy of ``model`` holding ``state``; ``model`` is left
    as it is."""
    from torch.optim.swa_utils import update_bn

    net = deepcopy(model)
    net.load_state_dict(state)
    update_bn(batches, net, device)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@dataclass
class Merged:
    """What :func:`merge` wrote: the format, the average's label, the series, its weights, and notes for the user."""

    kind: str
    label: str
    checkpoints: list[Checkpoint]
    weights: np.ndarray
    notes: list[str]


def merge(paths: list[str | Path], out: str | Path, swa_from: int | None = None, lawa: int | None = None,
          ema_half_life: float | None = None, in_order: bool = False, wsm: tuple[str, int] | None = None,
          power_gamma: float | None = None) -> Merged:
    """Average a series of checkpoints and write the result at ``out`` (a new path) in their format, atomically.
    Everything the command line says is checked before any checkpoint is read; a failed write leaves nothing."""
    out = Path(out)
    series = find(paths, in_order)
    label, w = series.weights(swa_from, lawa, ema_half_life, wsm, power_gamma)
    _check_out(out)
    merged = combine(reader(series), w)
    last = series.checkpoints[-1].path  # every average weights the last checkpoint: it was read
    made = [p for p in out.parents if not p.exists()]
    try:
        series.format.write(merged, last, out)
    except OSError as e:
        for folder in made:  # the folders made for it, deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(f"cannot write --out {out} ({e.strerror or e}); nothing was written: fix that and run the "
                        "same command again") from e
    return Merged(series.format.name, label, series.checkpoints, w, series.notes + _ema_note(label, series, w))


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} exists; choose a new path (nothing is overwritten)")
    above = next(p for p in out.parents if p.exists())
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder; choose a path in a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"cannot write --out {out}: {above} is not writable; choose a path you can write to")


def _ema_note(label: str, series: Series, w: np.ndarray) -> list[str]:
    if not label.startswith("EMA") or w[0] <= 0.5:
        return []
    span = series.steps[-1] - series.steps[0]
    return [f"the first checkpoint, {series.checkpoints[0].path.name}, weighs {w[0]:.3f}: an EMA of a series starts "
            f"from its first checkpoint, which stands for everything before it; a half-life well under the series' "
            f"{span} steps weighs it less"]


def merge_command(paths: list[str | Path], out: str | Path, swa_from: int | None = None, lawa: int | None = None,
                  ema_half_life: float | None = None, wsm: str | None = None, window: int | None = None,
                  power_gamma: float | None = None, in_order: bool = False) -> Merged:
    """``rbwa merge``: :func:`merge` (``wsm``, a decay shape, goes with ``window`` K), then what it averaged and
    wrote, and its notes, in lines."""
    if (wsm is None) != (window is None):
        raise UserError("--wsm SHAPE and --window K go together: the decay's shape over the last K intervals")
    done = merge(paths, out, swa_from, lawa, ema_half_life, in_order=in_order,
                 wsm=None if wsm is None else (wsm, window), power_gamma=power_gamma)
    used = [c for c, w in zip(done.checkpoints, done.weights, strict=True) if w]
    print(f"{done.label}: {len(used)} of {len(done.checkpoints)} {done.kind} checkpoints, from {used[0].path.name} to "
          f"{used[-1].path.name}; wrote {out}")
    for note in done.notes:
        print(f"note: {note}")
    return done
