"""What a snapshot costs (`rbwa train --snapshots-per-epoch K`): its bytes, and its time against a training step.

    python benchmarks/snapshots.py [--width 0.125]

ResNet-18 at batch 64 on CIFAR-shaped inputs: the median time of one training step (forward, backward, SGD step)
and of one snapshot (parameters and buffers copied to the CPU and written atomically, with fsync, as the trainer
does), measured side by side; the bytes of one snapshot file in float32 and in bfloat16. Prints each and the
ratios: a snapshot's time in training steps, and what K snapshots an epoch add to an epoch of 782 steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402

from rbwa.checkpoints import snapshots  # noqa: E402
from rbwa.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.125)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("resnet18", 10, args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    with tempfile.TemporaryDirectory() as run:
        counter = iter(range(10**6))
        candidates = {"training step": step}
        for dtype in ("float32", "bfloat16"):
            candidates[f"snapshot ({dtype})"] = lambda d=dtype: snapshots.write(Path(run), next(counter), 782, model, d)
        times = interleaved(candidates, rounds=20)
        sizes = {}
        for dtype in ("float32", "bfloat16"):
            snapshots.write(Path(run), 10**7, 782, model, dtype)
            sizes[dtype] = snapshots.path(Path(run), 10**7).stat().st_size
    params = sum(p.numel() for p in model.parameters())
    print(f"{machine()}; ResNet-18 width {args.width} ({params:,} parameters), batch 64")
    print("| what | median ms | in training steps | bytes |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        dtype = name[name.find("(") + 1:-1] if "(" in name else None
        print(f"| {name} | {1e3 * seconds:.2f} | {seconds / times['training step']:.3f} | "
              f"{sizes[dtype]:,} |" if dtype else f"| {name} | {1e3 * seconds:.2f} | 1 | - |")
    for k in (1, 4):
        added = k * times["snapshot (float32)"] / (782 * times["training step"])
        print(f"{k} float32 snapshot(s) an epoch of 782 steps: +{100 * added:.2f}% of the epoch's training time, "
              f"{k * sizes['float32'] / 2**20:.2f} MiB an epoch")


if __name__ == "__main__":
    main()
