"""Snapshots of a run's live weights (``rbwa train --snapshot-every N`` or ``--snapshots-per-epoch K``), the raw
material of post-hoc averaging (``rbwa posthoc``, ``rbwa merge``).

One format for every snapshot rbwa writes (``rbwa train``, and the Lightning and Hugging Face ``SnapshotCallback``):
one file per snapshot, ``<steps taken, 8 digits>.pt`` (in ``RUN/snapshots/`` for a run), written atomically,
holding ``step``, ``params`` (by name, in float32, bfloat16 or float16), ``buffers`` (the rest of the module's
state dict: BatchNorm statistics) and ``ties`` (each other name of a tied parameter, with the name it is stored
under), so that :func:`state_dict` gives back the module's whole state dict. Under FSDP2 every process gathers its
shards and the first one writes: the file is the one a 1-process run writes. A run resumed from its checkpoint
drops the snapshots taken after it and takes them again, so the series has no gap and no duplicate and follows the
trajectory that the run's checkpoint continues. ``rbwa merge`` reads them as one of its formats (:class:`Snapshot`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbwa.averaging.dtensor import whole
from rbwa.checkpoints.format import Format, load
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
    """A run's snapshot after ``step`` steps (:func:`store` into ``RUN/snapshots``)."""
    store(model, Path(run_dir) / FOLDER, step, dtype, write=save, epoch=step / steps_per_epoch)


def contents(module: nn.Module, dtype: str = "float32") -> dict[str, Any]:
    """What a snapshot of ``module`` holds (without its step), every tensor whole and on the CPU: FSDP2 shards are
    gathered, a collective that every process calls."""
    cast = getattr(torch, dtype)
    canonical = {id(p): name for name, p in module.named_parameters()}
    ties = {name: canonical[id(p)] for name, p in module.named_parameters(remove_duplicate=False)
            if canonical[id(p)] != name}
    params = {name: whole(p.detach()).to("cpu", cast, copy=True) for name, p in module.named_parameters()}
    buffers = {k: whole(v.detach()).to("cpu", copy=True) for k, v in module.state_dict().items()
               if k not in params and k not in ties}
    return {"params": params, "buffers": buffers, "ties": ties}


def store(module: nn.Module, folder: Path, step: int, dtype: str = "float32", write: bool = True,
         epoch: float | None = None) -> Path:
    """``folder/<step, 8 digits>.pt``: a snapshot of ``module`` after ``step`` optimizer steps, written atomically by
    the process with ``write`` (under FSDP2 every process calls this: it gathers the shards)."""
    found = {"step": step, **({} if epoch is None else {"epoch": epoch}), **contents(module, dtype)}
    target = Path(folder) / f"{step:08d}.pt"
    if write:
        atomic_torch_save(found, target)
    return target


def is_snapshot(found: Any) -> bool:
    """Whether a loaded file is a snapshot of this format."""
    return isinstance(found, dict) and isinstance(found.get("step"), int) and isinstance(found.get("params"), dict)


def state_dict(snapshot: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The module's whole state dict from a snapshot: its parameters under every name a tied one has, and its
    buffers (snapshots of rbwa < 0.4 record no ties: their tied names are missing)."""
    params = snapshot["params"]
    ties = {alias: params[name] for alias, name in snapshot.get("ties", {}).items()}
    return {**params, **ties, **snapshot["buffers"]}


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


def check_snapshot_args(every_n_steps: int, dtype: str) -> None:
    if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
        raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")


class Snapshot(Format):
    """rbwa's snapshots as ``rbwa merge`` reads them (stepped by their ``step``), written as the module's whole state
    dict (tied names included)."""

    name = "rbwa"

    def read(self, path: Path) -> dict[str, torch.Tensor]:
        return state_dict(load(path))
