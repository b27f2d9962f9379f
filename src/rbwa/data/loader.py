"""A device-resident batch loader: the whole split as one uint8 tensor, batches as slices of a randperm.

Augmentation (random crop from a 4-pixel zero padding, horizontal flip) is applied to whole batches at
once; the random numbers come from one CPU generator, so the batch order and the augmentation are the
same on every device and are restored exactly from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

PAD = 4


def crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = PAD) -> Tensor:
    """Crop each image at offset (dy, dx) of its zero-padded copy, then mirror where ``flip``. Pure."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dev = images.device
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.double() / 255
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).float()


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch: every image once. A last, incomplete batch is kept only when each of the ``world``
    processes gets at least 2 of its images (BatchNorm cannot train on one), and dropped for all alike otherwise:
    on one process only a last batch of one image is dropped."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world else 0)


def share(lo: int, hi: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of the global batch ``[lo, hi)``; the parts differ by at most one image."""
    return lo + (hi - lo) * rank // world, lo + (hi - lo) * (rank + 1) // world


class BatchLoader:
    """Iterate over (normalised float images, labels) batches of a split held on ``device``.

    ``batch_size`` is the global batch; with ``world`` > 1 processes, rank ``rank`` yields its
    contiguous share of every global batch, so the ranks together see exactly the one-process batches.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: Tensor, std: Tensor,
                 device: torch.device | str = "cpu", shuffle: bool = False, augment: bool = False,
                 seed: int = 0, channels_last: bool = False, rank: int = 0, world: int = 1) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.mean = (mean * 255).to(self.device)[None, :, None, None]
        self.std = (std * 255).to(self.device)[None, :, None, None]
        self.shuffle = shuffle
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = len(self.labels)
        return steps_per_epoch(n, self.batch_size, self.world) if self.shuffle else -(-n // self.batch_size)

    def loss_weights(self) -> list[float]:
        """Per step, what this rank's mean loss is multiplied by so that the processes' averaged gradient is
        exactly the global batch's mean gradient: share x world / global batch (1 when shares are equal)."""
        n, out = len(self.labels), []
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            a, b = share(lo, hi, self.rank, self.world)
            out.append((b - a) * self.world / (hi - lo))
        return out

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # one epoch's random numbers are drawn up front on the CPU and moved once: no per-step transfers
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:
            dy = torch.randint(0, 2 * PAD + 1, (n,), generator=self.generator).to(self.device)
            dx = torch.randint(0, 2 * PAD + 1, (n,), generator=self.generator).to(self.device)
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(self.device)
        order = order.to(self.device)
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            # this rank's share of the global batch (all of it on one process)
            lo, hi = share(lo, hi, self.rank, self.world)
            index = order[lo:hi]
            x = self.images[index]
            if self.augment:
                x = crop_flip(x, dy[lo:hi], dx[lo:hi], flip[lo:hi])
            x = ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield x, self.labels[index]


class TokenLoader:
    """Iterate over (input, target) windows of a token split held on ``device``: an epoch is every non-overlapping
    window of ``context`` tokens once, in an order drawn from ``generator`` (seeded, so restored exactly from a
    checkpoint); ``batch_size`` windows a step, split across ``world`` processes as BatchLoader splits images."""

    def __init__(self, tokens: Tensor, context: int, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        from rbwa.data.text import window_count

        self.tokens = tokens.to(device)
        self.context, self.batch_size = context, batch_size
        self.device = torch.device(device)
        self.windows = window_count(len(tokens), context)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = self.windows
        return steps_per_epoch(n, self.batch_size, self.world) if self.shuffle else -(-n // self.batch_size)

    def loss_weights(self) -> list[float]:
        """As ``BatchLoader.loss_weights``: every window has ``context`` targets, so shares weigh by windows."""
        out = []
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(self.windows, (i + 1) * self.batch_size)
            a, b = share(lo, hi, self.rank, self.world)
            out.append((b - a) * self.world / (hi - lo))
        return out

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        from rbwa.data.text import windows

        n = self.windows
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        starts = (order * self.context).to(self.device)
        for i in range(len(self)):
            lo, hi = share(i * self.batch_size, min(n, (i + 1) * self.batch_size), self.rank, self.world)
            yield windows(self.tokens, starts[lo:hi], self.context)
