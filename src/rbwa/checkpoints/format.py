"""What every checkpoint format of ``rbwa merge`` shares: the reader/writer interface, and the loading of torch files
(weights only, mapped where possible) with one-line refusals of what cannot be loaded."""

from __future__ import annotations

import re
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rbwa.errors import UserError
from rbwa.io import atomic_torch_save


class Format:
    """A checkpoint format: ``read`` gives a checkpoint's tensors by name, ``write`` a merged result at ``out`` (which
    does not exist) from the series' last checkpoint ``last``, atomically; a failed write raises OSError."""

    name = ""

    def read(self, path: Path) -> dict[str, Tensor]:
        raise NotImplementedError

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        atomic_torch_save(merged, out)


def load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A torch file's dict, its tensors mapped rather than read with ``mmap`` (a file of torch's zip format)."""
    try:
        found = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # garbage, a truncated file, one that holds more than tensors and plain types
        raise UserError(unreadable(path, e)) from e
    if not isinstance(found, dict):
        raise UserError(f"{path} holds a {type(found).__name__}, not a state dict")
    return found


def unreadable(path: Path, e: Exception) -> str:
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", text)
        why = textwrap.shorten(found.group(1) if found else "", 100, placeholder=" ...")
        return (f"{path} holds Python objects beside its tensors, which rbwa merge does not load (torch.load with "
                f"weights_only=True: {why}); save the model's state_dict() instead")
    return (f"{path} is not a readable checkpoint: torch.load cannot read it ({type(e).__name__}); it is damaged, "
            "truncated, or not a file torch.save wrote")


def tensors(found: dict[str, Any], path: Path) -> dict[str, Tensor]:
    """The tensors at the top level of a loaded dict; refuses one with none."""
    kept = {k: v for k, v in found.items() if isinstance(v, Tensor)}
    if not kept:
        raise UserError(f"{path} holds no tensors at its top level ({', '.join(map(str, list(found)[:3]))}): not a "
                        "state dict, an rbwa snapshot or a Lightning checkpoint")
    return kept


def as_step(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, Tensor)) and not isinstance(value, bool) else None
