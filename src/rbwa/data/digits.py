"""scikit-learn's 8x8 handwritten digits (shipped inside the package, no download), as 32x32 RGB."""

from __future__ import annotations

import torch

from rbwa.data.dataset import Split, stratified_indices
from rbwa.errors import UserError

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> tuple[Split, Split]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise UserError("the digits dataset needs scikit-learn: pip install 'rbwa[digits]'") from e
    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    classes = [str(d) for d in range(10)]
    test = stratified_indices(labels, round(TEST_FRACTION * len(labels)), SPLIT_SEED)
    train = torch.ones(len(labels), dtype=torch.bool)
    train[test] = False
    return Split(images[train], labels[train], classes), Split(images[test], labels[test], classes)
