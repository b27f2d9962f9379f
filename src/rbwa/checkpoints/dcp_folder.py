"""``torch.distributed.checkpoint`` folders (a ``.metadata`` file beside the shards), saved sharded by any number of
processes, read whole in one process: the weights are the dict under ``model`` (``get_state_dict``) or ``state_dict``
(Lightning's ``ModelParallelStrategy``, whose ``meta.pt`` gives the step), else the top-level tensors
(``dcp.save(model.state_dict())``); written as such a folder, the weights in the same place, no optimizer state."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rbwa.checkpoints.format import Format, as_step, load, tensors
from rbwa.checkpoints.lightning_file import LIGHTNING_DROP, LIGHTNING_META
from rbwa.errors import UserError
from rbwa.io import atomic_folder

DCP_WEIGHTS = ("model", "state_dict")  # the keys under which a distributed checkpoint may nest the model's weights


class DcpFolder(Format):
    name = "dcp"

    def __init__(self) -> None:
        self.keys: dict[Path, str | None] = {}  # where each checkpoint read holds its weights (None: top level)

    def read(self, path: Path) -> dict[str, Tensor]:
        found = _read_dcp(path)
        # decided on what was loaded: metadata names cannot tell {"model": {"x": ...}} from a top-level "model.x"
        key = next((k for k in DCP_WEIGHTS if isinstance(found.get(k), dict)), None)
        self.keys[path] = key
        return tensors(found[key] if key else found, path)

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        if last not in self.keys:
            self.read(last)
        key = self.keys[last]
        with atomic_folder(out) as tmp:
            _save_dcp({key: merged} if key else merged, tmp)
            if (last / LIGHTNING_META).is_file():  # Lightning's: its step and hyperparameters, not the trainer's state
                meta = load(last / LIGHTNING_META)
                torch.save({k: v for k, v in meta.items() if k not in LIGHTNING_DROP}, tmp / LIGHTNING_META)


def is_dcp(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def dcp_step(path: Path) -> int | None:
    """The step a distributed checkpoint records (Lightning's ``meta.pt``; None: none), its metadata checked first."""
    check_metadata(path)
    meta = path / LIGHTNING_META
    return as_step(load(meta).get("global_step")) if meta.is_file() else None


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    """torch.distributed.checkpoint in one process without a process group, without its warning that it is so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def check_metadata(path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise UserError(f"{path}: its torch.distributed.checkpoint metadata is not readable "
                        f"({type(e).__name__})") from e


def _read_dcp(path: Path) -> dict[str, Any]:
    """A distributed checkpoint whole, its shards joined, in this process (no process group)."""
    try:
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    except ImportError as e:  # torch < 2.3
        raise UserError("reading torch.distributed.checkpoint folders needs torch >= 2.3") from e
    with tempfile.TemporaryDirectory() as tmp, _quiet_dcp():
        whole = Path(tmp) / "whole.pt"
        try:
            dcp_to_torch_save(path, whole)
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            raise UserError(f"{path} is not a readable torch.distributed.checkpoint ({type(e).__name__}); it is "
                            "damaged or truncated") from e
        return load(whole)


def _save_dcp(state: dict[str, Any], folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _quiet_dcp():
            dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    except CheckpointException as e:  # the failed write inside, as what it is
        failure = next(iter(e.failures.values()), None)
        cause = failure[0] if isinstance(failure, tuple) else failure
        raise (cause if isinstance(cause, OSError) else OSError(str(cause))) from e
