"""What `rbwa merge` holds in memory: its peak against the length of the series it averages.

    python benchmarks/merge_memory.py [--mb 50] [--lengths 2 6 12] [--dir DIR]

Writes a series of N plain `torch.save` state dicts of about MB megabytes each (float32, random) for each length N,
and averages each whole series (`--lawa N`: every checkpoint read) in a fresh Python process, which reports its
resident memory after its imports and its peak during the merge (Linux's VmRSS and VmHWM: every page touched,
tensors included; the peak is reset after the imports; glibc told to return freed blocks at once); the difference
is what the merge held at its peak. Beside it, the same average with the series first read into memory (as rbwa
merge did before it streamed): the check that this measurement sees what a series in memory costs. Prints, per
length, both peaks above the imports in MB and in checkpoints: a streamed merge holds one checkpoint, its float64
accumulator (two checkpoints' bytes), the per-tensor float64 temporaries of the weighted sum and the result, whatever
N; a series held in memory adds one checkpoint per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

MODES = ("streamed", "held in memory")


def write_series(folder: Path, n: int, mb: float) -> int:
    """``n`` state dicts of ``mb`` megabytes in ``folder`` (step-100.pt, step-200.pt, ...); returns one's bytes."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    parts = max(1, round(mb / 4))  # tensors of about 4 MB, as a model's layers
    numel = int(mb * 1e6 / 4 / parts)
    g = torch.Generator().manual_seed(0)
    for i in range(1, n + 1):
        state = {f"layer{j}.weight": torch.randn(numel, generator=g) for j in range(parts)}
        torch.save(state, folder / f"step-{100 * i}.pt")
    return (folder / "step-100.pt").stat().st_size


def _status(key: str) -> int:
    """A line of /proc/self/status (Linux), in bytes: VmRSS the resident memory now, VmHWM its peak."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def child(mode: str, folder: Path, out: Path) -> None:
    """One merge in this fresh process; prints its resident memory after the imports and its peak during the merge
    (the peak is reset after the imports, so that theirs does not hide the merge's)."""
    import numpy as np

    from rbwa.averaging.weights import combine
    from rbwa.checkpoints.merge import merge
    from rbwa.checkpoints.series import find
    from rbwa.io import atomic_torch_save

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS (Linux >= 4.0)
    before = _status("VmRSS")
    n = len(find([folder]).checkpoints)
    if mode == "streamed":
        merge([folder], out, lawa=n)
    else:  # every checkpoint read first, as merge did before it streamed
        series = find([folder])
        held = [series.format.read(c.path) for c in series.checkpoints]
        atomic_torch_save(combine(held.__getitem__, np.full(n, 1 / n)), out)
    print(json.dumps({"imports": before, "peak": _status("VmHWM")}))


def measure(mode: str, folder: Path, out: Path) -> float:
    """Bytes the merge added to the process's peak, measured in a fresh process."""
    # glibc returns large freed blocks to the system at once (not kept by a threshold that adapts as it goes): the
    # peak is then what the merge held, not what the allocator kept, and the same from one run to the next
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), str(out)], capture_output=True,
                          text=True, check=True, env=env)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    out.unlink()
    return found["peak"] - found["imports"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes of one checkpoint (default: 50)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2, 6, 12], help="series lengths (default: 2 6 12)")
    ap.add_argument("--dir", default=None, help="where to write the series (default: a temporary folder)")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows, size = [], 0
        for n in args.lengths:
            folder = Path(tmp) / f"series-{n}"
            size = write_series(folder, n, args.mb)
            rows.append((n, [measure(mode, folder, Path(tmp) / "merged.pt") for mode in MODES]))
            for f in folder.iterdir():  # disk for the next length
                f.unlink()
    print(f"{machine()}; checkpoints of {size / 1e6:.1f} MB (float32 state dicts), every one averaged (--lawa N)")
    print("| checkpoints | streamed merge: peak above imports, MB | series held in memory: MB | streamed, in "
          "checkpoints | held, in checkpoints |")
    print("|---|---|---|---|---|")
    for n, (streamed, held) in rows:
        print(f"| {n} | {streamed / 1e6:.1f} | {held / 1e6:.1f} | {streamed / size:.2f} | {held / size:.2f} |")
    first, last = rows[0][1][0], rows[-1][1][0]
    print(f"streamed peak, {rows[-1][0]} checkpoints against {rows[0][0]}: {(last - first) / size:+.2f} checkpoints")


if __name__ == "__main__":
    main()
