"""The in-memory dataset every source produces: uint8 images, int64 labels, class names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rbwa.errors import UserError


@dataclass
class Split:
    images: Tensor  # uint8, (N, 3, H, W)
    labels: Tensor  # int64, (N,)
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be one per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.classes)


def stratified_indices(labels: Tensor, n: int, seed: int, what: str = "subset") -> Tensor:
    """``n`` indices drawn without replacement, keeping the class proportions (largest remainders), seeded."""
    total = labels.numel()
    classes = torch.unique(labels)
    if n > total:
        raise UserError(f"{what} of {n} is larger than the dataset ({total} images); use at most {total}")
    if n < classes.numel():
        raise UserError(f"{what} of {n} is smaller than the number of classes ({classes.numel()}); use at least that")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    exact = counts * n / total
    quota = exact.floor().long()
    short = n - int(quota.sum())
    if short:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:q]])
    return torch.sort(torch.cat(chosen)).values
