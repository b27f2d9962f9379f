"""Atomic writes: write a temporary file (or folder) beside the target, flush it to disk, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _torch_save(obj: Any, f) -> None:
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        # a failed write (disk full, file size limit) raises OSError inside torch.save, whose zip writer then
        # fails again on closing with a RuntimeError about the file position; the OSError is the cause to report
        cause = e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from e


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: _torch_save(obj, f))


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A new folder at ``path``, written whole or not at all: the block fills the temporary folder it is given (beside
    ``path``), whose files are then flushed to disk and which is renamed to ``path``; if the block fails, the temporary
    folder is removed. ``path`` must not exist."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's private one
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                fd = os.open(item, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a killed write left in ``directory``; returns them."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()] if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSON-lines file."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
