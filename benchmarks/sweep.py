"""Wall time of one smoke sweep (fig3, 4 runs, 1 torch thread each) with the local launcher and with Ray at
2 runs at a time, measured side by side in one run (alternating, fresh output folders each round).

    python benchmarks/sweep.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

FLAGS = ["fig3", "--preset", "smoke", "--seeds", "1", "--dataset", "digits", "--train-subset", "1400",
         "--test-subset", "300", "--epochs", "8", "--cpus-per-run", "1"]


def sweep(launcher: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rbwa", "reproduce", *FLAGS, "--out", out, "--launcher", launcher],
                       check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    rounds = p.parse_args().rounds
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(rounds):
        for launcher in times:
            times[launcher].append(sweep(launcher))
    local, ray = (statistics.median(times[k]) for k in ("local", "ray"))
    print(f"# sweep launchers\n\nMachine: {machine()}\n")
    print("| launcher | wall s (median of {rounds}) |".replace("{rounds}", str(rounds)))
    print(f"|---|---|\n| local (1 run at a time, 1 thread) | {local:.1f} |\n| ray (2 runs at a time, 1 thread each, "
          f"Ray start included) | {ray:.1f} |\n\nlocal / ray: {local / ray:.2f}x")


if __name__ == "__main__":
    main()
