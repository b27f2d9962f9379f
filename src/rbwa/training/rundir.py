"""The run directory, the one interface between a sweep, its launchers, the trainer and the report: its file
names, its lock and its status.

The trainer writes it; the sweeps (:mod:`rbwa.experiments`: the grids, the runner, the launchers) and the analysis
read it. It imports none of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from rbwa.errors import UserError

CONFIG, METRICS, SUMMARY, CHECKPOINT = "config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"
LOCK = ".lock"
STATUSES = ("finished", "diverged", "running", "interrupted", "not started")
# a status probe holds the lock for microseconds: a process that finds it taken tries again for this long before
# it believes that another process trains the run
LOCK_PATIENCE_SECONDS = 1.0


def _try_lock(f, patience: float) -> bool:
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


@contextlib.contextmanager
def run_lock(run_dir: Path, patience: float = LOCK_PATIENCE_SECONDS) -> Iterator[bool]:
    """Hold ``run_dir/.lock`` while a run trains; yields False when a live process holds it already.

    The lock is an flock, so it dies with its process: a killed sweep leaves no stale lock behind. A lock found
    taken is tried again for ``patience`` seconds, so a status probe (:func:`is_locked`) that holds it for an
    instant never makes a starting worker skip its run.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to --out {run_dir} ({e.strerror}); choose a writable directory") from e
    with open(run_dir / LOCK, "a") as f:
        if not _try_lock(f, patience):
            yield False
            return
        f.truncate(0)
        f.write(f"{os.getpid()}\n")  # who trains it, for a person (or a test) to see
        f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for one process that trains it by hand (``rbwa train``), or refuse in one line while
    another process (a sweep, another ``rbwa train``) holds it. Directories this created are removed again when
    the run stops on bad input (a UserError), so bad input leaves nothing behind."""
    created = next((p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()), None)
    try:
        with run_lock(run_dir) as mine:
            if not mine:
                raise UserError(f"{run_dir} is being trained by another process (pid {lock_holder(run_dir)}); wait "
                                "for it to finish, or stop it and rerun with --resume")
            yield
    except UserError:
        if created is not None and created.is_dir() and all(p.is_dir() or p.name == LOCK for p in created.rglob("*")):
            shutil.rmtree(created)
        raise


def lock_holder(run_dir: Path) -> str:
    """The process id the lock file names (the last process that took it), for messages."""
    try:
        return (run_dir / LOCK).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def is_locked(run_dir: Path) -> bool:
    """Whether a live process is training the run in ``run_dir`` now. Probes by taking the lock for an instant."""
    if not (run_dir / LOCK).exists():
        return False
    with open(run_dir / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def run_status(run_dir: Path) -> str:
    """One of STATUSES: a summary says finished or diverged; a live lock, running; a checkpoint, interrupted."""
    try:
        return json.loads((run_dir / SUMMARY).read_text()).get("status", "finished")
    except (OSError, ValueError, AttributeError):
        pass
    if is_locked(run_dir):
        return "running"
    return "interrupted" if (run_dir / CHECKPOINT).exists() else "not started"
