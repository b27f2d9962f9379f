"""Lightning checkpoints (``state_dict`` and ``global_step``), written as a ``.ckpt`` of the series' last one with the
merged ``state_dict`` and no optimizer, scheduler, loop or callback state, for ``load_from_checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from rbwa.checkpoints.format import Format, load
from rbwa.io import atomic_torch_save

LIGHTNING_META = "meta.pt"  # beside a Lightning distributed checkpoint's shards: everything but the tensors
LIGHTNING_DROP = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # trainer state a merge does not keep


def is_lightning(found: dict[str, Any]) -> bool:
    """Whether a loaded file is a Lightning checkpoint."""
    return isinstance(found.get("state_dict"), dict) and ("global_step" in found
                                                          or "pytorch-lightning_version" in found)


class LightningFile(Format):
    name = "lightning"

    def read(self, path: Path) -> dict[str, Tensor]:
        return load(path, mmap=True)["state_dict"]  # mapped: the optimizer state beside it is never read

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        keep = {k: v for k, v in load(last, mmap=True).items() if k not in LIGHTNING_DROP}
        atomic_torch_save({**keep, "state_dict": merged}, out)
