"""The one home of every default: the training config, its choices and help lines, and the experiment presets
(checked by :mod:`rbwa.training.validate`)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rbwa.errors import UserError

METHODS = ("sgd", "rbwa", "rbwa-e", "rswa", "swa", "ema", "sema", "lookahead", "schedulefree")
MODELS = ("resnet18", "vgg16", "gpt")
LR_SCHEDULES = ("constant", "step", "cosine", "harmonic", "rbwa-e", "wsd")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("none", "standard")
COUNTERS = ("folds", "epochs")
IMPLEMENTATIONS = ("copy", "lr_scale")
DEVICES = ("cpu", "cuda")
AMP = ("none", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
SNAPSHOT_DTYPES = ("float32", "bfloat16")
PARAM_DTYPES = ("float32", "bfloat16", "float64")


@dataclass
class TrainConfig:
    """One training run. Defaults follow the paper where it speaks (PAPER.md) and say so where it does not."""

    # data
    dataset: str = "cifar10"
    data_dir: str | None = None  # official archives; None -> $RBWA_DATA, else ~/.cache/rbwa
    cache_dir: str | None = None  # decoded image folders; None -> $RBWA_CACHE, else ~/.cache/rbwa
    image_size: int | None = None  # resize every image of a folder dataset to this square size
    train_subset: int | None = None  # class-stratified subset of the training split (text: its first N windows)
    test_subset: int | None = None  # class-stratified subset of the test split (text: its first N windows)
    subset_seed: int = 0  # the subsets stay fixed across --seed, so seeds vary only init and order
    augment: str = "none"  # the paper's regime (PAPER.md); "standard" = crop from 4-pixel padding + flip
    # model
    model: str = "resnet18"
    width: float = 1.0
    # the gpt model (language modelling on shakespeare or text:PATH): nanoGPT's CPU size by default
    context: int = 64  # tokens a window holds (and the positions the model knows)
    layers: int = 4
    heads: int = 4
    embedding: int = 128  # the model's width
    dropout: float = 0.0
    param_dtype: str = "float32"  # gpt: the weights' own dtype (bfloat16: held in bf16, not autocast)
    # optimisation: the paper states batch 64, 50 epochs, start epoch 10, and no LR or momentum;
    # lr 0.05 is the common 0.1-per-128 CIFAR recipe scaled linearly to batch 64
    method: str = "sgd"
    optimizer: str = "sgd"  # the base optimizer: sgd (momentum, L2) or adamw (decoupled decay on matrices only)
    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "constant"
    lr_milestones: list[int] | None = None  # epochs where "step" multiplies the LR by lr_gamma; None: [start_epoch]
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps, before any schedule
    decay_fraction: float = 0.2  # wsd: the last fraction of training, decayed linearly to 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    # averaging
    # averaging starts with the first batch after this many complete epochs; None: a fifth of the epochs (the
    # paper's 10 of 50), resolved into config.json
    start_epoch: int | None = None
    beta: float = 0.9  # rbwa-e
    counter: str = "folds"  # rbwa: n in 1/(n+1) counts folds ("folds", Eq. 2) or epochs since the start
    implementation: str = "copy"  # rbwa/rbwa-e: "copy" or the zero-memory "lr_scale"
    write_back: int = 1  # rbwa/rbwa-e: folds between write-backs of the average; 0: never (a side average)
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    ema_decay: float = 0.999
    # run
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead captures CUDA graphs
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch of all processes
    fsdp: bool = False  # gpt under torchrun: each block and the root sharded by FSDP2's fully_shard (not DDP)
    eval_batch_size: int = 500
    # snapshots of the live weights for `rbwa posthoc` (none by default): every this many steps, or this many
    # times an epoch at equal spacing (the last at the epoch's end)
    snapshot_every: int | None = None
    snapshots_per_epoch: int | None = None
    snapshot_dtype: str = "float32"
    out: str = "runs/run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}
# the allowed values of the keys that are a choice
# rbwa posthoc's families of side averages, and those it evaluates unless asked (wsm and power on demand)
POSTHOC_FAMILIES = ("swa", "lawa", "ema", "wsm", "power")
DEFAULT_POSTHOC_FAMILIES = ("swa", "lawa", "ema")

# in the order `rbwa train` checks them (the first wrong one is the one reported)
CHOICES: dict[str, tuple[str, ...]] = {"model": MODELS, "method": METHODS, "lr_schedule": LR_SCHEDULES,
                                       "augment": AUGMENTS, "counter": COUNTERS, "implementation": IMPLEMENTATIONS,
                                       "device": DEVICES, "amp": AMP, "compile_mode": COMPILE_MODES,
                                       "snapshot_dtype": SNAPSHOT_DTYPES, "optimizer": OPTIMIZERS,
                                       "param_dtype": PARAM_DTYPES}
# one line per key, for `rbwa train --help` and `rbwa reproduce --help`
HELP: dict[str, str] = {
    "dataset": "cifar10, cifar100 (official archives), digits (scikit-learn), folder:PATH "
               "(PATH/{train,test}/<class>/*.png|jpg), or for --model gpt shakespeare (DATA_DIR/tinyshakespeare/"
               "input.txt) or text:PATH (any UTF-8 file)",
    "data_dir": "where the official CIFAR archives and tinyshakespeare/input.txt are looked for (the archives also "
                "downloaded) ($RBWA_DATA, else ~/.cache/rbwa)",
    "cache_dir": "where decoded image folders are cached ($RBWA_CACHE, else ~/.cache/rbwa)",
    "image_size": "resize every image of a folder dataset to this many pixels square",
    "train_subset": "train on a class-balanced subset of this many training images (text: its first N windows of "
                    "--context characters)",
    "test_subset": "test on a class-balanced subset of this many test images (text: the first N windows of the "
                   "validation split)",
    "subset_seed": "seed of the subsets (fixed across --seed, so seeds vary only init and batch order)",
    "augment": "none (the paper's regime) or standard (random crop from 4-pixel padding + horizontal flip)",
    "model": "the network: resnet18 or vgg16 (CIFAR variants), or gpt (a character language model)",
    "width": "channel-width multiplier of the model (1 = the paper's; 0.125 for CPUs)",
    "context": "gpt: tokens in a training window (and the positions the model knows)",
    "layers": "gpt: transformer blocks",
    "heads": "gpt: attention heads per block",
    "embedding": "gpt: the width of the token embedding and of every block",
    "dropout": "gpt: dropout probability (0: none)",
    "param_dtype": "gpt: float32, or bfloat16 weights (and optimizer state) held in bf16, not autocast; RBWA's "
                   "averages stay float32 (float64: an exact reference for tests)",
    "method": "optimizer family: sgd, rbwa, rbwa-e, rswa, swa, ema, sema (Switch EMA: ema-decay every step, "
              "written back every epoch), lookahead or schedulefree",
    "epochs": "number of epochs to train",
    "batch_size": "images per optimizer step (under torchrun: the global batch)",
    "lr": "base learning rate (the base optimizer's)",
    "momentum": "SGD momentum coefficient, in [0, 1)",
    "weight_decay": "weight decay: SGD's L2 on every parameter, or AdamW's decoupled decay on the weight matrices",
    "nesterov": "use Nesterov momentum",
    "lr_schedule": "constant, step (x lr-gamma at each milestone), cosine, harmonic (RBWA's exact equivalent), "
                   "rbwa-e (RBWA-E's exact equivalent) or wsd (warmup-stable-decay), per step",
    "lr_milestones": "epochs at which the step schedule multiplies the LR by lr-gamma (default: the start epoch)",
    "lr_gamma": "factor of the step schedule",
    "optimizer": "the base optimizer: sgd (momentum, L2 weight decay) or adamw (decoupled weight decay on "
                 "weight matrices and embeddings only)",
    "warmup_steps": "linear warmup over this many steps before the schedule (0: none)",
    "decay_fraction": "wsd: the final fraction of training over which the LR decays linearly to 0",
    "adam_beta1": "adamw's first-moment coefficient",
    "adam_beta2": "adamw's second-moment coefficient",
    "start_epoch": "complete epochs before averaging (and the step schedule's decay) starts, for the methods and "
                   "schedules that use it (default: a fifth of --epochs, as the paper's 10 of 50)",
    "beta": "EMA coefficient of rbwa-e, in [0, 1) (the paper: 0.9)",
    "counter": "rbwa's n in 1/(n+1): folds (Eq. 2, every batch) or epochs since the start",
    "implementation": "rbwa/rbwa-e: copy (keeps the average) or lr_scale (same trajectory, no extra memory)",
    "write_back": "rbwa/rbwa-e: write the average into the live weights every this many folds (1: the paper); "
                  "0: never, evaluate the average as a side copy",
    "lookahead_k": "lookahead: steps between synchronisations",
    "lookahead_alpha": "lookahead: step of the slow weights towards the fast ones, in (0, 1]",
    "ema_decay": "ema and sema: decay of the average per step, in [0, 1)",
    "seed": "seed of the initial weights and the batch order",
    "device": "cpu or cuda",
    "amp": "none or bf16 (autocast; averages and the optimizer stay float32)",
    "channels_last": "channels-last memory format (faster convolutions on GPUs)",
    "compile": "torch.compile the forward pass",
    "compile_mode": "torch.compile's mode with --compile; reduce-overhead (CUDA graphs) was 2.6x-3.3x faster than "
                    "eager on an H200 at batch 64, default gave nothing (benchmarks/RESULTS.md)",
    "sync_bn": "under torchrun: BatchNorm statistics over the global batch of all processes",
    "fsdp": "gpt under torchrun: shard each block and the root (embeddings, tied head) with FSDP2's fully_shard "
            "instead of DDP; checkpoints stay whole, so any process count resumes them (1 process: unsharded)",
    "eval_batch_size": "images per evaluation batch (no effect on results)",
    "snapshot_every": "store the live weights and BatchNorm buffers every this many steps, for `rbwa posthoc`",
    "snapshots_per_epoch": "store them this many times an epoch, equally spaced, the last at the epoch's end",
    "snapshot_dtype": "float32 or bfloat16 (half the bytes) for the stored snapshots",
    "out": "the run directory to write",
}
# where things lie on one machine: never part of a run's identity, never written into a saved config
MACHINE_KEYS = ("out", "data_dir", "cache_dir")


def portable(cfg: TrainConfig, dataset_id: str) -> dict[str, Any]:
    """The config as run names and config.json record it: no machine path, the dataset by what it is."""
    return {**{k: v for k, v in cfg.to_dict().items() if k not in MACHINE_KEYS}, "dataset": dataset_id}


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every path in it (MACHINE_KEYS but ``out``, a ``folder:`` dataset) made absolute from this
    process's directory, so that a worker started elsewhere finds the same files."""
    found = dict(values)
    for key in ("data_dir", "cache_dir"):
        if found.get(key):
            found[key] = str(Path(found[key]).expanduser().absolute())
    if str(found.get("dataset", "")).startswith("folder:"):
        found["dataset"] = "folder:" + str(Path(found["dataset"][len("folder:"):]).expanduser().absolute())
    return found


def differing_keys(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The config keys on which two saved configs differ, where they lie excepted (MACHINE_KEYS, ``ignore``).

    A key absent from a config saved by an older rbwa had its default then.
    """
    defaults = TrainConfig().to_dict()
    return sorted(k for k in set(saved) | set(current) if k not in (*MACHINE_KEYS, *ignore)
                  and saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k)))


def identify(cfg: TrainConfig) -> dict[str, Any]:
    """``portable(cfg)`` with the dataset's identity looked up (an image folder's digest is cached)."""
    from rbwa.data import dataset_identity

    return portable(cfg, dataset_identity(cfg.dataset, cfg.cache_dir or default_dir("RBWA_CACHE")))


def default_dir(env: str) -> str:
    return os.environ.get(env) or str(Path("~/.cache/rbwa").expanduser())


def _coerce(name: str, value: Any) -> Any:
    """``value`` checked against the type of field ``name`` (ints accepted for floats)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UserError(f"config key {name!r} cannot be null")
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    origin = typing.get_origin(base)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UserError(f"config key {name!r} must be a list of integers, got {value!r}")
        return list(value)
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {name!r} must be true or false, got {value!r}")
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or isinstance(value, bool):
        raise UserError(f"config key {name!r} must be of type {base.__name__}, got {value!r}")
    return value


def make_config(**overrides: Any) -> TrainConfig:
    """A config from the defaults and ``overrides``, every key and type checked."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)}; valid keys are the `rbwa train` flags")
    return TrainConfig(**{k: _coerce(k, v) for k, v in overrides.items()})


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read config file {path} ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on the environment or on other keys, so config.json says everything."""
    start = start_epoch(cfg)
    return dataclasses.replace(
        cfg,
        data_dir=cfg.data_dir or default_dir("RBWA_DATA"),
        cache_dir=cfg.cache_dir or default_dir("RBWA_CACHE"),
        start_epoch=start,
        lr_milestones=cfg.lr_milestones if cfg.lr_milestones is not None else [start],
    )


def start_epoch(cfg: TrainConfig) -> int:
    """The start epoch: as given, else a fifth of the epochs (the paper's 10 of 50). Pure."""
    return cfg.start_epoch if cfg.start_epoch is not None else cfg.epochs // 5


# ---- presets ------------------------------------------------------------------------------------
# Each preset is a set of overrides of TrainConfig; the experiments (experiments/grids.py) add their own.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol at full scale (PAPER.md): 50 epochs, batch 64, averaging from epoch 10,
    # constant LR, no augmentation, full-width models, the whole dataset. For GPUs.
    "paper": {"epochs": 50, "batch_size": 64, "start_epoch": 10, "width": 1.0},
    # Scaled for 2 CPU cores: one figure's grid (12 runs) in about 25 minutes. Reductions: width 1/8
    # (ResNet-18: 0.18M parameters instead of 11.2M; VGG-16: 0.23M instead of 14.7M), a class-balanced
    # 5,000-image training subset (10%) and a 2,000-image test subset, 20 epochs instead of 50, averaging
    # from epoch 4 (the paper starts at 10/50 = 20% of training; 4/20 = 20%). Batch size 64, constant LR,
    # no augmentation, as `paper`.
    "cpu": {"epochs": 20, "batch_size": 64, "start_epoch": 4, "width": 0.125, "train_subset": 5000,
            "test_subset": 2000},
    # The paper's step count on 2 CPU cores: all 50,000 training and 10,000 test images at batch 64, so an
    # epoch is 782 batches as in the paper (the counter in RBWA's 1/(k+1) counts batches). Width 1/8 (about
    # 41 s an epoch on 2 cores), 15 epochs instead of 50, averaging from epoch 3 (the paper's 10/50 = 20%);
    # constant LR, no augmentation, the other settings as `cpu`.
    "cpu-full": {"epochs": 15, "batch_size": 64, "start_epoch": 3, "width": 0.125},
    # The language-model experiment (lm) on 1 CPU core per run: nanoGPT's CPU configuration of Tiny Shakespeare
    # (a 4-layer, 4-head, 128-wide GPT, context 64, batch 12, AdamW at 1e-3 with weight decay 0.1, 100 warmup steps),
    # 5 epochs of 1,307 steps (12 windows of 64 characters a step: 1.0M characters an epoch, 5.0M in all; nanoGPT
    # trains 2,000 steps) with averaging from epoch 1 (20%).
    "cpu-lm": {"epochs": 5, "start_epoch": 1, "batch_size": 12, "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100,
               "context": 64, "layers": 4, "heads": 4, "embedding": 128, "eval_batch_size": 512},
    # nanoGPT's GPU configuration of Tiny Shakespeare (6 layers, 6 heads, 384 wide, context 256, dropout 0.2), for
    # the GPU script.
    "gpu-lm": {"epochs": 5, "start_epoch": 1, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100,
               "context": 256, "layers": 6, "heads": 6, "embedding": 384, "dropout": 0.2, "eval_batch_size": 256},
    # Seconds, for tests: tiny models, tiny subsets, 2 epochs.
    "smoke": {"epochs": 2, "batch_size": 32, "start_epoch": 1, "width": 0.0625, "train_subset": 200,
              "test_subset": 100, "context": 32, "layers": 1, "heads": 2, "embedding": 32},
}


def preset_defaults(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])

