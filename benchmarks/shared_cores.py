"""Two runs sharing the machine's cores against one alone: `rbwa demo` (digits, ResNet-18 width 1/8), timed as one
process alone and as two at once, each with torch's OpenMP threads spinning while they wait (the default) and
sleeping (``OMP_WAIT_POLICY=PASSIVE``) or spinning briefly (``GOMP_SPINCOUNT``), in fresh processes, in one run.

    python benchmarks/shared_cores.py [--epochs 3]

Sharing 2 cores between two runs should cost about 2x; threads that spin on cores another process needs cost more.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

WAITS = {"spin (the default)": {}, "sleep (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
         "spin briefly, then sleep (GOMP_SPINCOUNT=10000)": {"GOMP_SPINCOUNT": "10000"}}


def demos(count: int, epochs: int, wait: dict[str, str]) -> float:
    """Seconds until ``count`` demos started together have all finished."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | wait
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "rbwa", "demo", "--epochs", str(epochs), "--out",
                                   str(Path(tmp) / f"demo{i}")], env=env, stdout=subprocess.DEVNULL)
                 for i in range(count)]
        if any(p.wait() for p in procs):
            raise SystemExit("a demo failed")
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15, help="epochs per method of each demo (default: the demo's)")
    parser.add_argument("--only", nargs="+", default=list(WAITS), choices=list(WAITS), help="which ways to wait")
    ns = parser.parse_args()
    epochs = ns.epochs
    print(f"# shared_cores\n\nMachine: {machine()}; rbwa demo --epochs {epochs}\n")
    print("| OpenMP threads waiting | one demo alone, s | two at once, s | two / one |\n|---|---|---|---|")
    for name in ns.only:
        one, two = demos(1, epochs, WAITS[name]), demos(2, epochs, WAITS[name])
        print(f"| {name} | {one:.1f} | {two:.1f} | {two / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
