"""Progress of a long loop, as a person watching it wants it: a bar on a terminal (steps/s, time left, the loss), and
on a file or pipe plain lines every ``every`` seconds (never a bar's carriage returns in a log)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """``seconds`` in words a person reads at a glance. Pure.

    >>> duration(42.4), duration(174), duration(7384)
    ('42 s', '2 min 54 s', '2 h 3 min')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Progress:
    """``total`` steps of ``desc``; :meth:`step` after each, ``loss`` a callable read only when shown (so a device
    value is not synchronised every step). ``enabled``: None follows the stream (a bar on a terminal, lines
    elsewhere), False shows nothing."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None, every: float = 60.0,
                 stream: TextIO | None = None, unit: str = "steps") -> None:
        self.total, self.desc, self.every, self.unit = total, desc, every, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled is not False
        self.bar: Any = None
        if self.enabled and (enabled or self.stream.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit[:-1] if unit.endswith("s") else unit, leave=False,
                            file=self.stream, mininterval=0.5)
        self.done, self.start = 0, time.perf_counter()
        self.last_shown = self.start

    def step(self, loss: Callable[[], float] | None = None) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None and now - self.last_shown >= 1.0:
                self.bar.set_postfix(loss=f"{loss():.4f}", refresh=False)
                self.last_shown = now
        elif self.enabled and now - self.last_shown >= self.every and self.done < self.total:
            self.last_shown = now
            rate = self.done / (now - self.start)
            shown = f", loss {loss():.4f}" if loss is not None else ""
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}, {rate:.3g} {self.unit}/s{shown}, "
                  f"{duration((self.total - self.done) / rate)} left", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
