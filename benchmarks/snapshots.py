"""What a snapshot costs (`rbwa train --snapshots-per-epoch K`): its bytes, and its time against a training step.

    python benchmarks/snapshots.py [--model resnet18|gpt] [--width 0.125] [--data-dir ../shared/data]

``resnet18``: ResNet-18 at batch 64 on CIFAR-shaped inputs, SGD with momentum, an epoch of 782 steps (CIFAR's
50,000 images), K = 1 and 4 (the `posthoc` experiment's). ``gpt``: the `cpu-lm` preset's GPT (4 layers, 4 heads, 128
wide, context 64, batch 12), AdamW, an epoch of as many steps as the preset takes on Tiny Shakespeare's training
split (DATA_DIR/tinyshakespeare/input.txt; 1,307 on the file we use), K = 4 and 16 (the `lm-tuned` experiment's).
Measured side by side: the median time of one training step (forward, backward, optimizer step) and of one
snapshot (parameters and buffers copied to the CPU and written atomically, with fsync, as the trainer does); the
bytes of one snapshot file in float32 and in bfloat16. Prints each and the ratios: a snapshot's time in training
steps, what K snapshots an epoch add to an epoch, and their disk for a whole run of the preset's epochs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402

from rbwa.checkpoints import snapshots  # noqa: E402
from rbwa.models import build_model  # noqa: E402
from rbwa.training.config import PRESETS  # noqa: E402


def resnet18(width: float, data_dir: str) -> tuple[torch.nn.Module, Callable[[], None], int, int, tuple[int, ...]]:
    """The model, one training step, steps an epoch, epochs a run, and the K to print."""
    model = build_model("resnet18", 10, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step, 782, PRESETS["cpu-full"]["epochs"], (1, 4)


def gpt(width: float, data_dir: str) -> tuple[torch.nn.Module, Callable[[], None], int, int, tuple[int, ...]]:
    from rbwa.data.loader import steps_per_epoch
    from rbwa.data.text import read_text, split_corpus, window_count
    from rbwa.models.gpt import GPT

    p = PRESETS["cpu-lm"]
    corpus = Path(data_dir) / "tinyshakespeare" / "input.txt"
    if not corpus.exists():
        raise SystemExit(f"error: no Tiny Shakespeare at {corpus} (pass --data-dir): it sets the steps an epoch")
    train = split_corpus(read_text(corpus)).train
    steps = steps_per_epoch(window_count(len(train), p["context"]), p["batch_size"])
    model = GPT(vocab=65, context=p["context"])
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    x, y = (torch.randint(0, 65, (p["batch_size"], p["context"])) for _ in range(2))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()

    return model, step, steps, p["epochs"], (4, 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("resnet18", "gpt"), default="resnet18")
    ap.add_argument("--width", type=float, default=0.125, help="ResNet-18's width")
    ap.add_argument("--data-dir", default="../shared/data", help="where tinyshakespeare/input.txt is (gpt)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, step, per_epoch, epochs, ks = {"resnet18": resnet18, "gpt": gpt}[args.model](args.width, args.data_dir)
    with tempfile.TemporaryDirectory() as run:
        counter = iter(range(10**6))
        candidates = {"training step": step}
        for dtype in ("float32", "bfloat16"):
            candidates[f"snapshot ({dtype})"] = lambda d=dtype: snapshots.write(Path(run), next(counter), per_epoch,
                                                                               model, d)
        times = interleaved(candidates, rounds=20)
        sizes = {}
        for dtype in ("float32", "bfloat16"):
            snapshots.write(Path(run), 10**7, per_epoch, model, dtype)
            sizes[dtype] = snapshots.path(Path(run), 10**7).stat().st_size
    params = sum(p.numel() for p in model.parameters())
    what = f"ResNet-18 width {args.width}, batch 64" if args.model == "resnet18" else "the cpu-lm GPT, batch 12 x 64"
    print(f"{machine()}; {what} ({params:,} parameters)")
    print("| what | median ms | in training steps | bytes |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        dtype = name[name.find("(") + 1:-1] if "(" in name else None
        print(f"| {name} | {1e3 * seconds:.2f} | {seconds / times['training step']:.3f} | "
              f"{sizes[dtype]:,} |" if dtype else f"| {name} | {1e3 * seconds:.2f} | 1 | - |")
    for k in ks:
        added = k * times["snapshot (float32)"] / (per_epoch * times["training step"])
        print(f"{k} float32 snapshot(s) an epoch of {per_epoch} steps: +{100 * added:.2f}% of the epoch's training "
              f"time, {k * sizes['float32'] / 2**20:.2f} MiB an epoch, {k * epochs * sizes['float32'] / 2**20:.0f} MiB "
              f"for a run of {epochs} epochs")


if __name__ == "__main__":
    main()
