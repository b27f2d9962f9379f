"""Hugging Face checkpoint folders (``model.safetensors``, sharded safetensors or ``pytorch_model.bin`` with their
index), stepped by their ``trainer_state.json``; an ``output_dir`` stands for its ``checkpoint-N/`` folders. Written as
a folder with ``model.safetensors`` and the last checkpoint's config, tokenizer and generation files (no trainer or
callback state), for ``from_pretrained``."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from torch import Tensor

from rbwa.checkpoints.format import Format, as_step, load, tensors
from rbwa.errors import UserError
from rbwa.io import atomic_folder

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
STATE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npy", ".npz")  # tensors or trainer state
TRAINER_FILES = ("trainer_state.json", "latest", "zero_to_fp32.py")  # the Trainer's and DeepSpeed's, not the model's


class HfFolder(Format):
    name = "hf"

    def read(self, path: Path) -> dict[str, Tensor]:
        index = next((path / n for n in HF_INDEXES if (path / n).is_file()), None)
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index else \
            [next(n for n in HF_WEIGHTS if (path / n).is_file())]
        out: dict[str, Tensor] = {}
        for name in files:
            out.update(_read_hf_file(path / name))
        return out

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        with atomic_folder(out) as tmp:
            for item in model_files(last):
                shutil.copy2(item, tmp / item.name)
            _save_safetensors(merged, tmp / "model.safetensors")


def is_hf(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in (*HF_WEIGHTS, *HF_INDEXES))


def trainer_step(path: Path) -> int | None:
    """The ``global_step`` of an HF checkpoint's ``trainer_state.json`` (None: absent or unreadable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return as_step(json.loads((path / "trainer_state.json").read_text()).get("global_step"))
    return None


def _read_hf_file(path: Path) -> dict[str, Tensor]:
    if path.suffix != ".safetensors":
        return tensors(load(path), path)
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}); it is damaged or "
                        "truncated") from e


def model_files(folder: Path) -> list[Path]:
    """The files of an HF checkpoint folder a merged folder keeps: config, tokenizer, generation config, custom code;
    not the weights, nor any trainer or callback state (optimizer, scheduler, RNG, ``trainer_state.json``,
    ``training_args.bin``, the callbacks' ``rbwa_callback*.pt``)."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix not in STATE_SUFFIXES
            and p.name not in (*TRAINER_FILES, *HF_INDEXES) and not p.name.startswith(".")]


def _save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
    except Exception as e:  # a failed write (disk full) comes as safetensors' own error
        if type(e).__name__ != "SafetensorError":
            raise
        raise OSError(str(e)) from e
