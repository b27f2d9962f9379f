"""A config's validation: every impossible value refused in one line (UserError) before any work starts.

One check per concern, run in this order (the first impossible value is the one named): the data (what the numbers
below depend on), the choices, the model, the LR schedule and AdamW's betas, the snapshots and compilation, the sizes,
the averaging, the base optimizer, the write-back, the device.
"""

from __future__ import annotations

from pathlib import Path

from rbwa.errors import UserError
from rbwa.training.config import (
    CHOICES,
    TrainConfig,
    start_epoch,
)


def validate(cfg: TrainConfig) -> None:
    """Raise UserError for the first impossible value, before any work starts."""
    for check in (_data, _choices, _model, _schedule, _snapshots, _sizes, _averaging, _optimizer, _write_back,
                  _device):
        check(cfg)


def uses_start(cfg: TrainConfig) -> bool:
    """Whether the start epoch matters to a run: an averaging method, a schedule that starts there, or snapshots
    (``rbwa posthoc`` averages those after it)."""
    return (cfg.method not in ("sgd", "schedulefree") or cfg.lr_schedule in ("step", "harmonic", "rbwa-e")
            or cfg.snapshots_per_epoch is not None or cfg.snapshot_every is not None)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _data(cfg: TrainConfig) -> None:
    """The dataset's name, and the file or folder it names."""
    from rbwa.data import check_dataset_name

    check_dataset_name(cfg.dataset)
    for kind in ("text", "folder"):  # the data first: what the numbers below depend on
        given = Path(cfg.dataset[len(kind) + 1:]).expanduser() if cfg.dataset.startswith(f"{kind}:") else None
        want = "file" if kind == "text" else "folder"
        if given is not None and not given.exists():
            raise UserError(f"--dataset {cfg.dataset}: the {want} {given} does not exist")
        if given is not None and given.is_dir() != (kind == "folder"):
            raise UserError(f"--dataset {cfg.dataset}: {given} is a {'folder' if given.is_dir() else 'file'}, not "
                            f"a {want}")


def _choices(cfg: TrainConfig) -> None:
    for key, choices in CHOICES.items():
        _choice(key.replace("_", " "), getattr(cfg, key), choices)


def _model(cfg: TrainConfig) -> None:
    """The weights' dtype, the sharding, and the GPT's sizes (which trains on text, and text only)."""
    if cfg.param_dtype != "float32" and cfg.model != "gpt":
        raise UserError(f"--param-dtype {cfg.param_dtype} applies to --model gpt (use --amp bf16 for the image "
                        "models)")
    if cfg.param_dtype == "bfloat16" and cfg.implementation == "lr_scale":
        raise UserError("implementation lr_scale rounds its steps away on bfloat16 weights; use implementation copy")
    if cfg.fsdp and cfg.model != "gpt":
        raise UserError("--fsdp shards --model gpt (its blocks and root); the image models train under DDP")
    if cfg.fsdp and cfg.method in ("swa", "ema", "schedulefree"):
        raise UserError(f"--fsdp does not run --method {cfg.method} (its side copy or x point is not sharded); for a "
                        "side EMA use --method rbwa-e --write-back 0 (rbwa: a side mean), which folds the shards")
    text = cfg.dataset == "shakespeare" or cfg.dataset.startswith("text:")
    if text != (cfg.model == "gpt"):
        raise UserError(f"--model gpt trains on text (shakespeare or text:PATH) and text trains --model gpt; got "
                        f"--model {cfg.model} on {cfg.dataset}")
    if cfg.model == "gpt":
        for name in ("context", "layers", "heads", "embedding"):
            if getattr(cfg, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.embedding % cfg.heads:
            raise UserError(f"the embedding width {cfg.embedding} must be divisible by the {cfg.heads} heads")
        if not 0.0 <= cfg.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {cfg.dropout}")
        if cfg.augment != "none":
            raise UserError("--augment applies to images, not to text")


def _schedule(cfg: TrainConfig) -> None:
    """The warmup, WSD's decay fraction, and AdamW's betas."""
    if cfg.warmup_steps < 0:
        raise UserError(f"warmup steps must be >= 0, got {cfg.warmup_steps}")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise UserError(f"decay fraction must be in (0, 1], got {cfg.decay_fraction}")
    if not (0.0 <= cfg.adam_beta1 < 1.0 and 0.0 <= cfg.adam_beta2 < 1.0):
        raise UserError("adam betas must be in [0, 1)")


def _snapshots(cfg: TrainConfig) -> None:
    """The snapshots' spacing, and the compile mode (which needs --compile)."""
    if cfg.snapshot_every is not None and cfg.snapshots_per_epoch is not None:
        raise UserError("give --snapshot-every or --snapshots-per-epoch, not both")
    for name in ("snapshot_every", "snapshots_per_epoch"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.compile_mode != "default" and not cfg.compile:
        raise UserError(f"compile mode {cfg.compile_mode} needs --compile")


def _sizes(cfg: TrainConfig) -> None:
    """The counts and sizes that must be positive."""
    positive = {"epochs": cfg.epochs, "batch size": cfg.batch_size, "lr": cfg.lr, "width": cfg.width,
                "eval batch size": cfg.eval_batch_size, "lookahead k": cfg.lookahead_k}
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"{name} must be > 0, got {value}")
    for name in ("train_subset", "test_subset", "image_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"{name.replace('_', ' ')} must be >= 1, got {value}")


def _averaging(cfg: TrainConfig) -> None:
    """The start epoch and the averages' coefficients."""
    start = start_epoch(cfg)
    if start < 0:
        raise UserError(f"start epoch must be >= 0, got {start}")
    if uses_start(cfg) and start >= cfg.epochs:
        raise UserError(f"start epoch must be in [0, epochs) = [0, {cfg.epochs}), got {start} (--method {cfg.method}, "
                        f"--lr-schedule {cfg.lr_schedule} and the snapshots' averages start there)")
    if not 0.0 <= cfg.beta < 1.0:
        raise UserError(f"beta must be in [0, 1), got {cfg.beta}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UserError(f"ema decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 < cfg.lookahead_alpha <= 1.0:
        raise UserError(f"lookahead alpha must be in (0, 1], got {cfg.lookahead_alpha}")


def _optimizer(cfg: TrainConfig) -> None:
    """The base optimizer's settings, and schedule-free's (which replaces the LR schedule)."""
    if not 0.0 <= cfg.momentum < 1.0:
        raise UserError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.weight_decay < 0 or cfg.lr_gamma <= 0:
        raise UserError("weight decay must be >= 0 and lr gamma > 0")
    if cfg.nesterov and cfg.momentum == 0:
        raise UserError("nesterov needs momentum > 0")
    if cfg.method == "schedulefree" and cfg.lr_schedule != "constant":
        raise UserError("schedulefree replaces the LR schedule; use --lr-schedule constant with it")


def _write_back(cfg: TrainConfig) -> None:
    """RBWA's and RBWA-E's implementation and write-back period."""
    if cfg.implementation == "lr_scale" and cfg.method not in ("rbwa", "rbwa-e"):
        raise UserError("implementation lr_scale applies to the rbwa and rbwa-e methods only")
    if cfg.write_back < 0:
        raise UserError(f"write back must be >= 0 (0: never), got {cfg.write_back}")
    if cfg.write_back != 1 and (cfg.method not in ("rbwa", "rbwa-e") or cfg.implementation == "lr_scale"):
        raise UserError("--write-back applies to rbwa and rbwa-e with implementation copy only")


def _device(cfg: TrainConfig) -> None:
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
