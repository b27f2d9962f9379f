"""A run's checkpoint (``checkpoint.pt``): what it holds, loading it safely, and continuing a run from it.

The checkpoint holds the model, the optimizer with its averaging state, the LR schedule, the side average, the
loader's generator, the RNG states, the metrics so far, the versions and the run's config: a resumed run ends
exactly where an uninterrupted one ends (same seed, CPU). It holds tensors and plain types only, and is loaded with
``weights_only=True``; under FSDP2 it is saved whole, so any process count resumes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbwa.checkpoints import snapshots
from rbwa.errors import UserError
from rbwa.io import remove_stale_temporaries
from rbwa.training import fsdp
from rbwa.training.config import TrainConfig, differing_keys, identify
from rbwa.training.methods import Setup
from rbwa.training.rundir import CONFIG

FORMAT = "rbwa-checkpoint-1"


def check_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds a run to continue; refuses a foreign one. Raises UserError."""
    saved = out / CONFIG
    if not saved.exists():
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a directory")
        return False
    if not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    for folder in (out, out / snapshots.FOLDER):  # a write killed half-way; the file it was replacing is intact
        remove_stale_temporaries(folder)
    try:
        old = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{saved} is unreadable ({e}); move the directory away and start again") from e
    differing = differing_keys(old, identify(cfg))
    if differing == ["dataset"] and str(old.get("dataset")).startswith("folder:") and "(" not in old["dataset"]:
        raise UserError(f"{out} names its data by path ({old['dataset']}), as runs before rbwa 0.2 did; "
                        f"run `rbwa migrate {out.parent.parent}` once to rename its runs")
    if differing:
        raise UserError(f"{out} was run with a different config ({', '.join(differing)}); use another --out")
    return True


def load_checkpoint(path: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True`` (tensors and plain types only: nothing to execute).

    Refuses one written for another config (``config``: the run's ``identify(cfg)``) in one line.
    """
    from torch.torch_version import TorchVersion  # a str: written by rbwa 0.1 into every checkpoint's versions

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to restart the run") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an rbwa checkpoint; delete it to restart the run")
    saved = ckpt.get("config")  # absent from checkpoints of rbwa 0.1, whose config.json was checked already
    if config is not None and saved is not None:
        differing = differing_keys(saved, config)
        if differing:
            raise UserError(f"checkpoint {path} was written for another config ({', '.join(differing)}); "
                            "delete it to restart the run, or resume with the config it was written for")
    return ckpt


def checkpoint_state(epoch: int, model_state: dict[str, Any], setup_state: dict[str, Any], generator: torch.Generator,
                     metrics: list[dict[str, Any]], provenance: dict[str, Any], device: torch.device,
                     identity: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint after ``epoch`` holds (the model's and the set-up's state whole, as a 1-process run's)."""
    return {"format": FORMAT, "epoch": epoch, "model": model_state, "setup": setup_state,
            "loader_rng": generator.get_state(), "torch_rng": torch.get_rng_state(), "metrics": metrics,
            "versions": provenance, "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "config": identity}


def restore(ckpt: dict[str, Any], model: nn.Module, setup: Setup, generator: torch.Generator, device: torch.device,
            sharded: bool) -> tuple[list[dict[str, Any]], int]:
    """Load a checkpoint into the model, the set-up, the loader's ``generator`` and the RNGs; returns (the metrics
    so far, the first epoch to train)."""
    if sharded:  # saved whole, at any process count: each process keeps its own shards of it
        ckpt["model"] = fsdp.placed_model_state(ckpt["model"], model)
        ckpt["setup"]["optimizer"] = fsdp.placed_optimizer_state(ckpt["setup"]["optimizer"], setup.optimizer)
    model.load_state_dict(ckpt["model"])
    setup.load_state_dict(ckpt["setup"])
    generator.set_state(ckpt["loader_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    return ckpt["metrics"], ckpt["epoch"] + 1
