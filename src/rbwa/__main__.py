"""`rbwa` and `python -m rbwa`: settle how torch's threads wait, before torch loads, then run the command line.

torch's OpenMP threads spin while they wait for work. On cores that other processes keep busy, a spinning thread
holds a core its own teammate or the other process needs, and a run slows far beyond its fair share (two demos on 2
cores took 4.3x to 5.2x one alone, `benchmarks/shared_cores.py`); threads that sleep while they wait
(``OMP_WAIT_POLICY=PASSIVE``) share fairly, but cost speed when a run is alone. So a command that trains or evaluates
with more than one thread first signs in (a file named by its process id, locked for the process's life, in a
folder of the user's in the temporary directory) and looks, for a fifth of a second, at what other processes keep
busy on the cores it may use. If they leave fewer cores free than its threads need (by half a core or more), or
another rbwa command is signed in and running (two started together see each other, though neither is busy yet),
its threads sleep; otherwise torch's default. A look of a fifth of a second decides for the whole run, and a run
that started alone keeps spinning when another starts beside it: start such runs with ``OMP_WAIT_POLICY=PASSIVE``.
The wait policy changes no number a run computes (the thread count, which does, stays as set). Your own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

COMPUTES = ("train", "demo", "reproduce", "posthoc", "sample", "merge")  # the commands whose threads do work
SLACK = 0.5  # cores: threads sleep when other processes leave fewer free than the threads need by this much
_HELD: list[int] = []  # the sign-in's open, locked file: the lock lasts as long as the process, however it ends


def cpu_times(cpus: set[int]) -> list[list[int]] | None:
    """Each of ``cpus``' times from /proc/stat (user nice system idle iowait irq softirq steal ..., in ticks); None
    where the file is not there (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    rows = {int(name[3:]): [int(v) for v in values] for name, *values in (line.split() for line in lines)
            if name.startswith("cpu") and name[3:].isdigit()}
    return [rows[c] for c in sorted(cpus) if c in rows] or None


def busy_cores(before: list[list[int]], after: list[list[int]]) -> float:
    """How many cores were busy between two reads of ``cpu_times``: per core, the share of its ticks that were
    neither idle nor waiting for input/output, summed. Pure."""
    busy = 0.0
    for b, a in zip(before, after, strict=True):
        ticks = [y - x for x, y in zip(b[:8], a[:8])]  # guest time is counted in user already
        if sum(ticks) > 0:
            busy += 1 - (ticks[3] + ticks[4]) / sum(ticks)
    return busy


def usable_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def others_busy(seconds: float = 0.2) -> float | None:
    """Cores that other processes keep busy, of those this process may run on, over ``seconds`` of this one
    sleeping; None where unknown."""
    cpus = usable_cpus()
    before = cpu_times(cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = cpu_times(cpus)
    return None if after is None or len(after) != len(before) else busy_cores(before, after)


def threads(environ: MutableMapping[str, str]) -> int:
    """The threads torch will use: ``OMP_NUM_THREADS`` where set (its first number), else one a usable core."""
    with contextlib.suppress(ValueError):
        return max(1, int(environ.get("OMP_NUM_THREADS", "").split(",")[0]))
    return len(usable_cpus())


def computes(argv: Sequence[str], environ: MutableMapping[str, str]) -> bool:
    """True for a command whose work runs on a team of threads (more than one), which others sharing the cores
    should know of and whose waiting is worth settling."""
    return any(a in COMPUTES for a in argv[:1]) and not {"-h", "--help"} & set(argv) and threads(environ) > 1


def sign_in(folder: Path, pid: int) -> Callable[[], list[int]]:
    """Sign process ``pid`` in to ``folder`` (a file named by it, locked while the process lives: the kernel drops the
    lock however it ends); returns a function that lists the other processes signed in that still run and removes
    the files of those that have ended. The folder must be a directory of the user's, not a link (it is made private,
    mode 0700); OSError otherwise, or where files cannot be locked (not POSIX)."""
    import fcntl

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{folder} is not a private directory of this user's")
    if info.st_mode & 0o077:  # ours, but open to others (made under another umask): made private
        os.chmod(folder, 0o700)
    partial = folder / f".{pid}.new"  # locked first, then named: nobody sees a signed-in file without its lock
    fd = os.open(partial, os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(partial, folder / str(pid))
    _HELD.append(fd)
    atexit.register(lambda: (folder / str(pid)).unlink(missing_ok=True))

    def ended(path: Path) -> bool:
        """True (and the file gone) where no process holds ``path``'s lock."""
        try:
            other = os.open(path, os.O_RDONLY)
        except OSError:
            return True
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # locked: its process runs
        else:
            with contextlib.suppress(OSError):
                path.unlink()
            return True
        finally:
            os.close(other)

    def others() -> list[int]:
        return sorted(int(f.name) for f in folder.iterdir()
                      if f.name.isdigit() and int(f.name) != pid and not ended(f))

    return others


def settle_threads(argv: Sequence[str], environ: MutableMapping[str, str],
                   measure: Callable[[], float | None] = others_busy,
                   peers: Callable[[], list[int]] = list, cores: int | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` for a command that computes with more than one thread, where
    other processes leave fewer of the ``cores`` free than its threads need or other rbwa commands run (``peers``,
    listed after ``measure``), unless the user chose how threads wait. Returns why it did, or None."""
    if not computes(argv, environ) or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return None
    wants, cores = threads(environ), len(usable_cpus()) if cores is None else cores
    busy = measure()
    try:
        beside = peers()
    except OSError:  # a sign-in folder we cannot read: the cores' load alone decides
        beside = []
    crowded = busy is not None and cores - busy < min(wants, cores) - SLACK + 1e-9
    if not crowded and not beside:
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (f"{len(beside)} other rbwa command{'s' * (len(beside) > 1)} running" if beside
            else f"other processes keep {busy:.1f} of {cores} cores busy")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    peers: Callable[[], list[int]] = list
    if computes(argv, os.environ):  # signed in whatever the wait: others sharing the cores see this run
        # where the folder cannot be made ours or files cannot be locked, the cores' load alone decides
        with contextlib.suppress(OSError, ImportError, AttributeError):
            peers = sign_in(Path(tempfile.gettempdir()) / f"rbwa-running-{os.getuid()}", os.getpid())
    settle_threads(argv, os.environ, peers=peers)  # before torch loads: OpenMP reads it once
    from rbwa.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
