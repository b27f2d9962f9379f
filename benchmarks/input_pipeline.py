"""Our device-resident loader against a conventional DataLoader, side by side in one process.

    python benchmarks/input_pipeline.py

Both read the same uint8 images (synthetic, CIFAR-sized) with standard augmentation (crop from a
4-pixel padding + flip) and batch 64. The DataLoader does it per sample in Dataset.__getitem__ with
2 workers. Also: the training throughput of the cpu preset's model (ResNet-18, width 1/8), and one
epoch of training fed by each loader.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

from rbwa.data.loader import PAD, BatchLoader, channel_stats  # noqa: E402
from rbwa.models import build_model  # noqa: E402

N, BATCH = 10_000, 64


class PerSample(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = mean[:, None, None] * 255, std[:, None, None] * 255

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.nn.functional.pad(self.images[i], (PAD,) * 4)
        dy, dx = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
        img = img[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img.float() - self.mean) / self.std, self.labels[i]


def images_per_second(batches, limit: int | None = None) -> float:
    t0, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
        if limit and seen >= limit:
            break
    return seen / (time.perf_counter() - t0)


def train_epoch(model, opt, batches, limit: int) -> float:
    t0, seen = time.perf_counter(), 0
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (N,), generator=g)
    mean, std = channel_stats(images)
    ours = BatchLoader(images, labels, BATCH, mean, std, shuffle=True, augment=True)
    conventional = torch.utils.data.DataLoader(PerSample(images, labels, mean, std), batch_size=BATCH, shuffle=True,
                                               num_workers=2, persistent_workers=True)
    images_per_second(conventional, 2000)  # start the workers
    rates = {"ours": [], "DataLoader": []}
    for _ in range(3):  # alternate, median of three epochs each
        rates["ours"].append(images_per_second(ours))
        rates["DataLoader"].append(images_per_second(conventional))
    loader = {k: sorted(v)[1] for k, v in rates.items()}

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 0.125)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = images[:BATCH].float(), labels[:BATCH]
    resident = [(x, y)] * 40
    train_epoch(model, opt, resident[:3], 3 * BATCH)
    model_rate = train_epoch(model, opt, resident, 40 * BATCH)
    e2e = {"ours": [], "DataLoader": []}
    for _ in range(2):
        e2e["ours"].append(train_epoch(model, opt, ours, 3000))
        e2e["DataLoader"].append(train_epoch(model, opt, conventional, 3000))
    e2e = {k: max(v) for k, v in e2e.items()}

    print(f"# input_pipeline\n\nMachine: {machine()}; {N} synthetic 32x32 images, batch {BATCH}, "
          "standard augmentation\n")
    print("| measurement | images/s | ratio |\n|---|---|---|")
    print(f"| our loader alone | {loader['ours']:,.0f} | {loader['ours'] / loader['DataLoader']:.1f}x the DataLoader |")
    print(f"| DataLoader alone (2 workers, per-sample augmentation) | {loader['DataLoader']:,.0f} | 1.0x |")
    print(f"| model training (ResNet-18 w1/8, data resident) | {model_rate:,.0f} | our loader = "
          f"{loader['ours'] / model_rate:.1f}x this |")
    print(f"| training fed by our loader | {e2e['ours']:,.0f} | {e2e['ours'] / e2e['DataLoader']:.2f}x the reference |")
    print(f"| training fed by the DataLoader (reference loop) | {e2e['DataLoader']:,.0f} | 1.00x |")


if __name__ == "__main__":
    main()
