"""Snapshots of a run's live weights (``rbwa train --snapshot-every N`` or ``--snapshots-per-epoch K``), the raw
material of post-hoc averaging (``rbwa posthoc``).

One file per snapshot, ``RUN/snapshots/<steps taken, 8 digits>.pt``, written atomically: the parameters and the
BatchNorm buffers by name, in float32 or bfloat16. A run resumed from its checkpoint drops the snapshots taken
after it and takes them again, so the series has no gap and no duplicate and follows the trajectory that the
run's checkpoint continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbwa.averaging import whole
from rbwa.io import atomic_torch_save

FOLDER = "snapshots"


def snapshot_steps(steps_per_epoch: int, epochs: int, every: int | None = None,
                   per_epoch: int | None = None) -> list[int]:
    """The numbers of steps taken after which a snapshot is stored. Pure.

    ``every``: every that many steps. ``per_epoch`` K: K times an epoch of S steps, after round(j S / K) of its
    steps for j = 1..K (the last at the epoch's end).

    >>> snapshot_steps(10, 2, per_epoch=3)
    [3, 7, 10, 13, 17, 20]
    >>> snapshot_steps(10, 2, every=8)
    [8, 16]
    """
    total = steps_per_epoch * epochs
    if every is not None:
        return list(range(every, total + 1, every))
    if per_epoch is not None:
        within = sorted({round(j * steps_per_epoch / per_epoch) for j in range(1, per_epoch + 1)} - {0})
        return [e * steps_per_epoch + n for e in range(epochs) for n in within]
    return []


def path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"{step:08d}.pt"


def write(run_dir: Path, step: int, steps_per_epoch: int, model: nn.Module, dtype: str = "float32",
          save: bool = True) -> None:
    """Store ``model``'s parameters (in ``dtype``) and buffers after ``step`` steps, atomically. FSDP2 shards are
    gathered whole, a collective: every process calls this, and only the one with ``save`` writes."""
    cast = getattr(torch, dtype)
    params = {name: whole(p.detach()).to("cpu", cast, copy=True) for name, p in model.named_parameters()}
    buffers = {name: whole(b.detach()).to("cpu", copy=True) for name, b in model.named_buffers()}
    if save:
        atomic_torch_save({"step": step, "epoch": step / steps_per_epoch, "params": params, "buffers": buffers},
                          path(run_dir, step))


def taken(run_dir: Path) -> list[int]:
    """The steps of the snapshots stored in ``run_dir``, in order."""
    folder = Path(run_dir) / FOLDER
    return sorted(int(p.stem) for p in folder.glob("*.pt") if p.stem.isdigit()) if folder.is_dir() else []


def drop_after(run_dir: Path, step: int) -> list[int]:
    """Delete the snapshots taken after ``step`` steps (a resumed run takes them again); returns their steps."""
    dropped = [s for s in taken(run_dir) if s > step]
    for s in dropped:
        path(run_dir, s).unlink(missing_ok=True)
    return dropped


def read(run_dir: Path, step: int) -> dict[str, Any]:
    return torch.load(path(run_dir, step), map_location="cpu", weights_only=True)


def save_state(module: nn.Module, folder: Path, step: int, dtype: str = "float32") -> Path:
    """``folder/step-{step}.pt``: ``module``'s state dict with its floating-point tensors in ``dtype``, written
    atomically; the framework callbacks' snapshot, read by ``rbwa merge`` (stepped by the number in its name)."""
    cast = getattr(torch, dtype)
    state = {k: v.detach().to("cpu", cast if v.is_floating_point() else v.dtype, copy=True)
             for k, v in module.state_dict().items()}
    path = Path(folder) / f"step-{step}.pt"
    atomic_torch_save(state, path)
    return path


def check_snapshot_args(every_n_steps: int, dtype: str) -> None:
    if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
        raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
