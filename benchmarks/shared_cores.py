"""Two runs sharing the machine's cores against one alone: `rbwa demo` (digits, ResNet-18 width 1/8), timed as one
process alone and as two at once, in fresh processes, in one run, for each way torch's OpenMP threads may wait:
rbwa's default (each command signs in and looks at the cores before torch loads: its threads sleep beside another
rbwa command or on busy cores, and spin otherwise), torch's own default (spin a while, ``GOMP_SPINCOUNT=300000``,
which rbwa leaves alone as the user's choice), and always sleep (``OMP_WAIT_POLICY=PASSIVE``). Last, rbwa's default
for a demo started while another already runs (the first chose to spin: it was alone).

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

WAITS = {"rbwa's default": {}, "spin (torch's default, GOMP_SPINCOUNT=300000)": {"GOMP_SPINCOUNT": "300000"},
         "sleep (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"}}


def demos(count: int, epochs: int, wait: dict[str, str], stagger: float = 0.0) -> float:
    """Seconds until ``count`` demos, started ``stagger`` seconds apart, have all finished."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | wait
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs = []
        for i in range(count):
            time.sleep(stagger * (i > 0))
            procs.append(subprocess.Popen([sys.executable, "-m", "rbwa", "demo", "--epochs", str(epochs), "--out",
                                           str(Path(tmp) / f"demo{i}")], env=env, stdout=subprocess.DEVNULL))
        if any(p.wait() for p in procs):
            raise SystemExit("a demo failed")
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15, help="epochs per method of each demo (default: the demo's)")
    parser.add_argument("--only", nargs="+", default=list(WAITS), choices=list(WAITS), help="which ways to wait")
    parser.add_argument("--stagger", type=float, default=10.0, help="seconds between the two demos of the last row")
    ns = parser.parse_args()
    print(f"# shared_cores\n\nMachine: {machine()}; rbwa demo --epochs {ns.epochs}\n")
    print("| OpenMP threads waiting | one demo alone, s | two at once, s | two / one |\n|---|---|---|---|")
    alone = {}
    for name in ns.only:
        alone[name], two = demos(1, ns.epochs, WAITS[name]), demos(2, ns.epochs, WAITS[name])
        print(f"| {name} | {alone[name]:.1f} | {two:.1f} | {two / alone[name]:.2f}x |", flush=True)
    default = alone.get("rbwa's default")
    if default:
        late = demos(2, ns.epochs, {}, stagger=ns.stagger)
        print(f"\nrbwa's default, the second demo started {ns.stagger:.0f} s after the first: both done after "
              f"{late:.1f} s, {late / default:.2f}x one alone")


if __name__ == "__main__":
    main()
