"""The paper's experiments as named grids of configs, and the runs of a sweep they expand to.

Runs live in ``OUT/runs/<name>``, where the name is built from what varies plus a hash of the whole
config, so a run shared by two experiments (fig3's ResNet-18 runs are table1's batch-64 runs) is
trained once. The runner (:mod:`~rbwa.experiments.runner`) trains them and lists them for ``rbwa report``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.training.config import TrainConfig, identify, make_config, preset_defaults, resolve
from rbwa.training.validate import validate

# Which paper claim each experiment tests, and its grid: (setting, label, overrides) per grid point.
# The "setting" is what varies across panels or rows (model, batch size); the "label" is the method line.
METHOD_ROWS = [("sgd", {"method": "sgd"}), ("rbwa", {"method": "rbwa"})]


def _models(dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(model, label, {"dataset": dataset, "model": model, **o})
            for model in ("resnet18", "vgg16") for label, o in METHOD_ROWS]


POSTHOC_LABELS = {"constant": "sgd (snapshots)", "cosine": "sgd (cosine LR, snapshots)",
                  "wsd": "sgd (wsd, snapshots)"}  # by LR schedule (wsd: its last 20% decayed linearly to 0)


def _snapshot_runs(dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [("resnet18", label, {"dataset": dataset, "model": "resnet18", "method": "sgd", "lr_schedule": schedule,
                                 "snapshots_per_epoch": 4}) for schedule, label in POSTHOC_LABELS.items()]


LM_ROWS = [("adamw", {"method": "sgd", "snapshots_per_epoch": 4}),  # "sgd": no averaging, the base optimizer alone
           ("rbwa", {"method": "rbwa"}),
           ("adamw (harmonic LR, = rbwa)", {"method": "sgd", "lr_schedule": "harmonic"}),
           ("rbwa-e", {"method": "rbwa-e"}),
           ("adamw (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
           ("adamw (wsd)", {"method": "sgd", "lr_schedule": "wsd"}),
           ("ema", {"method": "ema"}),
           ("schedule-free adamw", {"method": "schedulefree"})]


LM_TUNED_ROWS = [("adamw (snapshots)", {"method": "sgd", "snapshots_per_epoch": 16}),
                 ("adamw (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                 ("adamw (wsd, decay 0.2)", {"method": "sgd", "lr_schedule": "wsd"})]


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "fig3": {"title": "Figure 3/4: CIFAR-10, ResNet-18 and VGG-16, SGD vs RBWA", "setting": "model",
             "grid": _models("cifar10")},
    "fig5": {"title": "Figure 5/6: CIFAR-100, ResNet-18 and VGG-16, SGD vs RBWA", "setting": "model",
             "grid": _models("cifar100")},
    "table1": {"title": "Table 1: ResNet-18 on CIFAR-10, batch size study", "setting": "batch size",
               "grid": [(str(b), label, {"model": "resnet18", "batch_size": b, **o})
                        for b in (16, 32, 64, 128, 256) for label, o in METHOD_ROWS]},
    "variants": {"title": "The averaging family on ResNet-18, CIFAR-10", "setting": "model",
                 "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                     ("sgd", {"method": "sgd"}),
                     ("rbwa", {"method": "rbwa"}),
                     ("rbwa (epoch counter)", {"method": "rbwa", "counter": "epochs"}),
                     ("rbwa-e", {"method": "rbwa-e"}),
                     ("rswa", {"method": "rswa"}),
                     ("swa", {"method": "swa"}),
                     ("ema", {"method": "ema"}),
                     ("lookahead", {"method": "lookahead"}),
                 ]]},
    "alternatives": {"title": "RBWA against its alternatives on ResNet-18, CIFAR-10", "setting": "model",
                     "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                         ("sgd", {"method": "sgd"}),
                         ("rbwa", {"method": "rbwa"}),
                         ("rbwa (epoch counter)", {"method": "rbwa", "counter": "epochs"}),
                         ("sgd (step x0.1 at start)", {"method": "sgd", "lr_schedule": "step"}),
                         ("sgd (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                         ("swa", {"method": "swa"}),
                     ]]},
    # The write-back period is the only thing that varies: one EMA coefficient (0.999, the ema method's and Switch
    # EMA's) for every line; "every step" is RBWA-E's mechanism at that coefficient, not the paper's beta 0.9.
    "writeback": {"title": "Write-back period of an EMA of the weights, ResNet-18, CIFAR-10", "setting": "model",
                  "grid": [("resnet18", label, {"model": "resnet18", "beta": 0.999, "ema_decay": 0.999, **o})
                           for label, o in [
                               ("sgd", {"method": "sgd"}),
                               ("ema (never written back)", {"method": "rbwa-e", "write_back": 0}),
                               ("sema (every epoch)", {"method": "sema"}),
                               ("ema, every 100 steps", {"method": "rbwa-e", "write_back": 100}),
                               ("ema, every step (rbwa-e)", {"method": "rbwa-e"}),
                           ]]},
    # SGD storing its weights 4 times an epoch, at a constant LR and on a cosine schedule: every side average of each
    # trajectory, chosen after training (`rbwa posthoc` on each run, then `rbwa report`); the cosine runs are also
    # the decay an average may replace, and the series for averaging on top of it
    "posthoc": {"title": "Side averages chosen after training, from the snapshots of constant-LR and cosine-LR SGD, "
                         "ResNet-18, CIFAR-10", "setting": "model", "grid": _snapshot_runs("cifar10")},
    "posthoc-cifar100": {"title": "Side averages chosen after training, from the snapshots of constant-LR and "
                                  "cosine-LR SGD, ResNet-18, CIFAR-100", "setting": "model",
                         "grid": _snapshot_runs("cifar100")},
    # a character GPT on Tiny Shakespeare with AdamW: the paper's claims and the post-hoc answer beyond CNNs (the
    # constant-LR runs store their weights 4 times an epoch for `rbwa posthoc`); text has no subsets
    "lm": {"title": "A GPT on Tiny Shakespeare with AdamW at one learning rate, 1e-3: RBWA, its twin, schedules and "
                    "averages", "setting": "model",
           "grid": [("gpt", label, {"dataset": "shakespeare", "model": "gpt", "optimizer": "adamw", **o})
                    for label, o in LM_ROWS]},
    # the fair comparison (issue 40): every schedule at four peak learning rates (4e-3 added when every method chose
    # the grid's top, 2e-3, on the first two seeds), WSD's decay fraction at three, the constant-LR runs storing their
    # weights 16 times an epoch (a window of 10% of training holds 8 snapshots) for
    # `rbwa posthoc --families swa lawa ema wsm power`; each method's learning rate is chosen on the other seeds
    "lm-tuned": {"title": "A GPT on Tiny Shakespeare with AdamW: averages against decays, each tuned on the other "
                          "seeds", "setting": "model",
                 "grid": [("gpt", f"{label}, lr {lr:g}", {"dataset": "shakespeare", "model": "gpt",
                                                          "optimizer": "adamw", "lr": lr, **o})
                          for lr in (5e-4, 1e-3, 2e-3, 4e-3) for label, o in LM_TUNED_ROWS]
                         + [("gpt", f"adamw (wsd, decay {f:g}), lr 0.001",
                             {"dataset": "shakespeare", "model": "gpt", "optimizer": "adamw", "lr": 1e-3,
                              "method": "sgd", "lr_schedule": "wsd",
                              "decay_fraction": f}) for f in (0.1, 0.4)]},
    "controls": {"title": "RBWA against learning-rate annealing controls, ResNet-18, CIFAR-10", "setting": "model",
                 "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                     ("sgd", {"method": "sgd"}),
                     ("rbwa", {"method": "rbwa"}),
                     ("sgd (harmonic LR, = rbwa)", {"method": "sgd", "lr_schedule": "harmonic"}),
                     ("rbwa-e", {"method": "rbwa-e"}),
                     ("sgd (rbwa-e's LR, = rbwa-e)", {"method": "sgd", "lr_schedule": "rbwa-e"}),
                     ("sgd (step x0.1 at start)", {"method": "sgd", "lr_schedule": "step"}),
                     ("sgd (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                 ]]},
}


@dataclass
class GridRun:
    """One run of a sweep: which experiment, grid point (setting, label) and seed it is, and its config."""

    experiment: str
    setting: str
    label: str
    seed: int
    config: TrainConfig

    @property
    def name(self) -> str:
        return Path(self.config.out).name


def run_name(cfg: TrainConfig) -> str:
    """A readable, unique directory name: the usual varying keys and a hash of everything else.

    The hash sees the dataset as what it is (``identify``), never where it lies, so any copy of the data,
    given by any path, finds the same runs.
    """
    # only keys that differ from the defaults enter the hash, so adding a config key keeps every name; the start
    # epoch's default was 10 when runs were first named (now a fifth of the epochs, resolved): 10 stays out
    defaults = {**TrainConfig().to_dict(), "start_epoch": 10}
    keys = {k: v for k, v in identify(cfg).items() if v != defaults[k]}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    extra = "" if cfg.optimizer == "sgd" else f"-{cfg.optimizer}"
    extra += "" if cfg.lr_schedule == "constant" else f"-{cfg.lr_schedule}"
    extra += "" if cfg.counter == "folds" or cfg.method != "rbwa" else f"-{cfg.counter}"
    extra += "" if cfg.write_back == 1 else f"-wb{cfg.write_back}"
    extra += "" if cfg.snapshots_per_epoch is None else f"-snap{cfg.snapshots_per_epoch}"
    extra += "" if cfg.snapshot_every is None else f"-snapevery{cfg.snapshot_every}"
    return f"{cfg.model}-bs{cfg.batch_size}-{cfg.method}{extra}-s{cfg.seed}-{digest}"


def expand(experiment: str, preset: str, seeds: int, out: str | Path,
           overrides: dict[str, Any] | None = None) -> list[GridRun]:
    """Every run of ``experiment`` under ``preset``: grid points x seeds 0..seeds-1. Validated, nothing written.

    Within a setting the runs go seed by seed (every method's seed 0, then seed 1, ...), so a sweep stopped
    part way leaves paired seeds that the report can compare.
    """
    if experiment not in EXPERIMENTS:
        raise UserError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    overrides = dict(overrides or {})
    grid = EXPERIMENTS[experiment]["grid"]
    varied = sorted({k for _, _, point in grid for k in point if k != "dataset"} & set(overrides))
    if varied:
        raise UserError(f"{experiment} sets {', '.join(varied)} itself; drop those flags")
    base = preset_defaults(preset)
    runs = []
    for setting in dict.fromkeys(s for s, _, _ in grid):
        for seed in range(seeds):
            for label, point in ((label, point) for s, label, point in grid if s == setting):
                # the grid names the dataset; a user's --dataset (their copy of it) wins
                cfg = make_config(**{**base, **point, **overrides, "seed": seed})
                validate(resolve(cfg))
                cfg.out = str(Path(out) / "runs" / run_name(cfg))
                runs.append(GridRun(experiment, setting, label, seed, cfg))
    return runs
