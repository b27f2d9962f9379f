"""What the tests of rbwa merge share: series made by hand, the command's output, a write that fails midway."""

import errno
import json
import os
import re
from pathlib import Path

import torch

from rbwa.cli import main


def _plain_series(folder, steps=(10, 20, 30, 40)):
    """State dicts whose float tensor is the step itself, so every average is a number computable by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in steps:
        torch.save({"w": torch.full((2, 3), float(s)), "half": torch.full((2,), float(s), dtype=torch.float16),
                    "count": torch.tensor(s)}, folder / f"step-{s}.pt")
    return folder


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["merge", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code: int, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def _value(path: Path) -> float:
    """The merged "w" (every entry the same number), from a torch file or an HF folder."""
    if path.is_dir():
        from safetensors.torch import load_file

        w = load_file(path / "model.safetensors")["w"]
    else:
        found = torch.load(path, weights_only=True)
        w = found["state_dict"]["w"] if "state_dict" in found else found["w"]
    assert torch.equal(w, torch.full_like(w, w.flatten()[0].item()))
    return w.flatten()[0].item()


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), float(value), dtype=torch.float64), "count": torch.tensor(int(value))}


def _hf_checkpoint(folder: Path, value: float, global_step: int | None = None) -> Path:
    """An HF checkpoint folder as the Trainer leaves it: the model's files beside the trainer's and a callback's."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(_state(value), folder / "model.safetensors")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        (folder / name).write_text("{}")
    (folder / "merges.txt").write_text("a b\n")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "rbwa_callback.pt"):
        torch.save({"state": 1}, folder / name)
    if global_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": global_step}))
    return folder


def _fail_midway(target) -> None:
    """A write that fills part of its file (an open file, or a path) and then finds the disk full."""
    if hasattr(target, "write"):
        target.write(b"partial")
    else:
        Path(target).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
