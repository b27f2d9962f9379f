"""`rbwa` and `python -m rbwa`: settle how torch's threads wait, before torch loads, then run the command line.

torch's OpenMP threads spin while they wait for work. On cores that other processes keep busy, a spinning thread
holds a core its own teammate or the other process needs, and a run slows far beyond its fair share (two demos on 2
cores took 4.3x to 5.2x one alone, `benchmarks/shared_cores.py`); threads that sleep while they wait
(``OMP_WAIT_POLICY=PASSIVE``) share fairly, but cost about a fifth of the speed of a run alone. So a command that
trains or evaluates first signs in (a file named by its process id in a folder of the user's in the temporary
directory) and looks, for a fifth of a second, at what other processes keep busy on the cores it may use: half a core
or more, or another rbwa command signed in and still running (two started together see each other, though neither is
busy yet), and its threads sleep; otherwise torch's default. A process that starts beside an rbwa run already
spinning cannot change that run's threads: start such runs with ``OMP_WAIT_POLICY=PASSIVE``. The wait policy changes
no number a run computes (the thread count, which does, stays as set). Your own ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` wins.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

COMPUTES = ("train", "demo", "reproduce", "posthoc", "sample", "merge")  # the commands whose threads do work
BUSY = 0.5  # cores kept busy by other processes from which threads sleep rather than spin


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


def others_busy(seconds: float = 0.2) -> float | None:
    """Cores that other processes keep busy, of those this process may run on, over ``seconds`` of this one
    sleeping; None where unknown."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    before = cpu_times(cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = cpu_times(cpus)
    return None if after is None or len(after) != len(before) else busy_cores(before, after)


def sign_in(folder: Path, pid: int) -> Callable[[], list[int]]:
    """Sign process ``pid`` in to ``folder`` (an empty file named by it, gone at exit); returns a function that lists
    the other processes signed in that still run (and drops those that do not)."""
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / str(pid)
    mine.touch()
    atexit.register(mine.unlink, missing_ok=True)

    def others() -> list[int]:
        alive = []
        for f in folder.iterdir():
            if f.name.isdigit() and int(f.name) != pid:
                try:
                    os.kill(int(f.name), 0)
                except ProcessLookupError:
                    f.unlink(missing_ok=True)
                    continue
                except PermissionError:  # another user's process of that number
                    pass
                alive.append(int(f.name))
        return sorted(alive)

    return others


def settle_threads(argv: Sequence[str], environ: MutableMapping[str, str],
                   measure: Callable[[], float | None] = others_busy,
                   peers: Callable[[], list[int]] = list) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` for a command that computes, on cores other processes keep
    busy or beside other rbwa commands (``peers``, listed after ``measure``), unless the user chose how threads
    wait. Returns a note saying so, or None."""
    if not any(a in COMPUTES for a in argv[:1]) or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return None
    busy, beside = measure(), peers()
    if (busy is None or busy < BUSY) and not beside:
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    why = (f"{len(beside)} other rbwa command{'s' * (len(beside) > 1)} running" if beside
           else f"other processes keep {busy:.1f} cores busy")
    return (f"note: {why}, so torch's threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE) and share the cores "
            "fairly; set OMP_WAIT_POLICY to choose")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    peers: Callable[[], list[int]] = list
    if any(a in COMPUTES for a in argv[:1]):
        with contextlib.suppress(OSError):  # a temporary directory we cannot write: the cores' load alone decides
            peers = sign_in(Path(tempfile.gettempdir()) / f"rbwa-running-{os.getuid()}", os.getpid())
    note = settle_threads(argv, os.environ, peers=peers)  # before torch loads: OpenMP reads it once
    if note and sys.stderr.isatty():
        print(note, file=sys.stderr)
    from rbwa.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
