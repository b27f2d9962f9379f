"""``rbwa train``: one run from a preset, a YAML file and the flags given, trained under its run directory's lock,
and its result in one line."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.training.config import TrainConfig, load_yaml, make_config, preset_defaults
from rbwa.training.distributed import end_distributed, stop_distributed
from rbwa.training.loop import train
from rbwa.training.methods import method_label
from rbwa.training.rundir import CONFIG, claim


def train_command(preset: str | None, config_file: str | None, flags: dict[str, Any], resume: bool = False,
                  quiet: bool = False) -> None:
    """Train the run that ``preset``'s settings, ``config_file``'s keys and ``flags`` say (each winning over the one
    before); the first process prints its result. Under torchrun every process ends here (it does not return)."""
    values = preset_defaults(preset) if preset else {}
    values.update(load_yaml(config_file) if config_file else {})
    values.update(flags)
    cfg = make_config(**values)
    # one process trains a run directory at a time: a sweep's worker or another `rbwa train` holds its lock
    # (under torchrun, rank 0 holds it for all ranks)
    lock = claim(Path(cfg.out)) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    try:
        with lock:  # a process that holds the run is named first; then a --resume with no run to continue
            if resume and not (Path(cfg.out) / CONFIG).exists():
                raise UserError(f"--resume: {cfg.out} holds no run to continue (no {CONFIG}); check --out, or drop "
                                "--resume to start a new run there")
            summary = train(cfg, resume=resume, progress=None if not quiet else False)
    except BaseException:
        stop_distributed()
        raise
    if os.environ.get("RANK", "0") == "0":
        print(result_line(cfg, summary, f"run directory {values.get('out', TrainConfig.out)}"))
    end_distributed(0)  # under torchrun: does not return


def result_line(cfg: TrainConfig, summary: dict[str, Any], where: str) -> str:
    """A finished run in one line: a language model by its validation loss, an image model by its accuracy. Pure."""
    label = method_label(cfg)
    if "vocab" in summary:  # a language model: its measure is the validation loss
        return (f"{label}: final validation loss {summary['final_test_loss']:.4f} nats "
                f"({summary['final_test_loss'] / math.log(2):.3f} bits per character), final train loss "
                f"{summary['final_train_loss']:.4g}; {where}")
    return (f"{label}: final test accuracy {summary['final_test_acc']:.2f}%, best "
            f"{summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']}), final train loss "
            f"{summary['final_train_loss']:.4g}; {where}")
