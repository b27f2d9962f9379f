"""Plain ``torch.save`` state dicts: read as their top-level tensors, written as one."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from rbwa.checkpoints.format import Format, load, tensors


class TorchFile(Format):
    name = "torch"

    def read(self, path: Path) -> dict[str, Tensor]:
        return tensors(load(path), path)
