"""``rbwa sample RUN``: text from a trained GPT run, its final weights or its average, seeded and deterministic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rbwa.errors import UserError
from rbwa.training.config import default_dir
from rbwa.training.rundir import CHECKPOINT, CONFIG


def _corpus(saved: dict[str, Any], dataset: str | None, data_dir: str | None):
    """The run's text, found on this machine: shakespeare under ``data_dir``, a text file given by ``dataset``
    (its path is not recorded, only what it is), checked to be the one the run trained on."""
    from rbwa.data import dataset_identity
    from rbwa.data.text import load_text

    recorded = saved["dataset"]
    if recorded.startswith("text:") and not dataset:
        raise UserError(f"the run trained on {recorded}; give that file with --dataset text:PATH")
    name = dataset or recorded
    given = dataset_identity(dataset, default_dir("RBWA_CACHE")) if dataset else recorded
    if given != recorded:
        raise UserError(f"--dataset {dataset} is {given}, but the run trained on {recorded}")
    return load_text(name, Path(data_dir or default_dir("RBWA_DATA")))


def _average(ckpt: dict[str, Any], model: torch.nn.Module, run: Path) -> dict[str, torch.Tensor]:
    """The run's average, by parameter name, as a state dict of ``model``: a side average (swa, ema) or an RBWA
    average never written back (kept by the base optimizer's indices, named through its order)."""
    from rbwa.training.methods import parameter_names, side_state

    names = [name for name, _ in model.named_parameters()]
    side = ckpt["setup"].get("side")
    config = ckpt.get("config") or {}
    if side is not None:
        averages = side_state(side, names)["averages"]
    else:
        optimizer = ckpt["setup"]["optimizer"]
        started = optimizer["param_groups"][0].get("rbwa", {}).get("started")
        by_index = [optimizer.get("state", {}).get(i, {}).get("rbwa_average") for i in range(len(names))]
        averages = {}
        if started and config.get("write_back", 1) != 1 and all(a is not None for a in by_index):
            order = parameter_names(model, config.get("optimizer", "sgd"))
            averages = dict(zip(order, by_index, strict=True))
    if not averages:
        raise UserError(f"{run} keeps no average apart from its weights (a method that writes its average back, or one "
                        "whose averaging has not begun): sample without --average")
    return {**model.state_dict(), **averages}


def sample(run: str | Path, tokens: int = 500, prompt: str = "\n", seed: int = 0, average: bool = False,
           dataset: str | None = None, data_dir: str | None = None, temperature: float = 1.0,
           progress: bool | None = None) -> str:
    """``prompt`` and ``tokens`` characters drawn from the run's model after it, with a generator seeded by
    ``seed``: the same arguments give the same text (on one machine)."""
    from rbwa.models.gpt import GPT

    run = Path(run)
    try:
        saved = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run} holds no readable {CONFIG}: not a run directory") from e
    if saved.get("model") != "gpt":
        raise UserError(f"{run} trained {saved.get('model')}, not a language model (--model gpt)")
    if tokens < 1 or temperature <= 0:
        raise UserError("--tokens must be >= 1 and --temperature > 0")
    if not (run / CHECKPOINT).exists():
        raise UserError(f"{run} has no {CHECKPOINT} yet: nothing has been trained")
    corpus = _corpus(saved, dataset, data_dir)
    start = corpus.encode(prompt)
    if len(start) == 0:
        raise UserError("--prompt must hold at least one character")
    model = GPT(len(corpus.vocab), saved["context"], saved["layers"], saved["heads"], saved["embedding"])
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    if average:
        model.load_state_dict(_average(ckpt, model, run))
    model.eval()
    from rbwa.training.progress import Progress

    shown = Progress(tokens, f"sample {run.name}", progress, unit="characters")
    with torch.no_grad():
        out = model.generate(start[None, :], tokens, torch.Generator().manual_seed(seed), temperature, shown.step)
    shown.close()
    return corpus.decode(out[0])
