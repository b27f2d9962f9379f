"""Method name -> what the training loop steps, the LR schedule, and how the model is evaluated.

The recurrent methods (rbwa, rbwa-e, rswa, lookahead) are the :class:`rbwa.RBWA` wrapper with
different settings and are evaluated on the live weights. SWA and EMA are side averages kept by parameter name
(:class:`rbwa.averaging.named.NamedAverages`, float32 for low-precision weights, as the wrapper's and the
callbacks'), swapped into the model for evaluation after BatchNorm re-estimation (``swa_utils.update_bn``).
Schedule-free SGD comes from the ``schedulefree`` package.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import update_bn

from rbwa.averaging import RBWA, fold_weight, lookahead, rswa, sema
from rbwa.averaging.named import NamedAverages
from rbwa.training.config import TrainConfig, resolve

# LR schedules that a recurrent average is algebraically equal to: the fold weight of RBWA (mean) or
# RBWA-E (ema) at every step from the start, so SGD on them takes exactly the recurrent method's steps.
FOLD_SCHEDULES = {"harmonic": "mean", "rbwa-e": "ema"}


def lr_factor(schedule: str, step: int, total_steps: int, start_step: int, milestone_steps: list[int],
              gamma: float, beta: float, warmup_steps: int = 0, decay_fraction: float = 0.2) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based). Pure.

    ``harmonic`` (1/(k+1) at the k-th step from the start) is the schedule RBWA equals; ``rbwa-e`` (1 at
    the start step, then 1 - beta) is the one RBWA-E equals: its first fold takes the live weights as they are.
    ``wsd`` (warmup-stable-decay) holds the LR, then decays it linearly to 0 over the last ``decay_fraction`` of
    training. A linear warmup over ``warmup_steps`` ((step + 1) / warmup_steps) multiplies any schedule.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * _schedule_factor(schedule, step, total_steps, start_step, milestone_steps, gamma, beta,
                                   decay_fraction)


def _schedule_factor(schedule: str, step: int, total_steps: int, start_step: int, milestone_steps: list[int],
                     gamma: float, beta: float, decay_fraction: float) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay = max(1, round(total_steps * decay_fraction))
        return min(1.0, (total_steps - step) / decay)
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestone_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if schedule in FOLD_SCHEDULES:
        return 1.0 if step < start_step else fold_weight(FOLD_SCHEDULES[schedule], step - start_step, beta)
    raise ValueError(f"unknown LR schedule {schedule!r}")


class SideAverage:
    """SWA (the equal-weight mean of the weights at the end of every epoch from the start) or EMA (every step from
    the start) of the model's parameters, never written back: a :class:`NamedAverages` with its schedule."""

    def __init__(self, model: nn.Module, kind: str, start_step: int, steps_per_epoch: int, ema_decay: float,
                 average_dtype: torch.dtype | None = None) -> None:
        self.kind = kind
        self.names = [name for name, _ in model.named_parameters()]
        # SWA folds after the last step of every epoch from the start; EMA after every step
        self.first = start_step + (steps_per_epoch - 1 if kind == "swa" else 0)
        self.named = (NamedAverages("mean", every=steps_per_epoch, write_back=None, average_dtype=average_dtype)
                      if kind == "swa" else
                      NamedAverages("ema", beta=ema_decay, write_back=None, average_dtype=average_dtype))

    def after_step(self, model: nn.Module, step: int) -> None:
        self.named.after_step(model, step - self.first)

    @property
    def started(self) -> bool:
        return self.named.folds > 0

    def state_dict(self) -> dict[str, Any]:
        return self.named.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.named.load_state_dict(side_state(state, self.names))


def side_state(saved: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A side average's saved state in :class:`NamedAverages`' form: as it is, or converted from the
    ``AveragedModel`` state dict of rbwa < 0.4 (``module.``-prefixed parameters and buffers, and ``n_averaged``);
    ``names``: the model's parameters."""
    if "n_averaged" not in saved:
        return saved
    folds = int(saved["n_averaged"])
    averages = {name: saved[f"module.{name}"] for name in names} if folds else {}
    return {"averages": averages, "counts": dict.fromkeys(averages, folds), "folds": folds, "settings": {}}


def parameter_names(model: nn.Module, optimizer: str) -> list[str]:
    """The names of ``model``'s parameters in the order the base optimizer (``"sgd"`` or ``"adamw"``, as
    :func:`base_optimizer` builds it) holds them: the indices of its ``state_dict``, RBWA's averages' included."""
    names = {id(p): name for name, p in model.named_parameters()}
    groups = decay_groups(model, 0.0) if optimizer == "adamw" else [{"params": list(model.parameters())}]
    return [names[id(p)] for group in groups for p in group["params"]]


def method_label(cfg: TrainConfig) -> str:
    """What a run trains, in words: its method, with the base optimizer named where the method is none (``sgd``
    with AdamW is plain AdamW) and a schedule other than constant. Pure."""
    base = cfg.optimizer if cfg.method == "sgd" else cfg.method
    return base + ("" if cfg.lr_schedule == "constant" else f" ({cfg.lr_schedule} LR)")


def reestimates_bn(method: str, write_back: int = 1) -> bool:
    """Whether evaluation re-estimates BatchNorm's statistics: the evaluated weights are not the ones they were
    gathered with (a side average, schedule-free's x point, or an average not written back at every fold)."""
    return method in ("swa", "ema", "schedulefree", "sema") or (method in ("rbwa", "rbwa-e") and write_back != 1)


@dataclass
class Setup:
    """What a run of one method needs besides the model and the data."""

    optimizer: Optimizer  # what the loop calls step() on
    scheduler: LambdaLR | None
    side: SideAverage | None = None
    schedule_free: bool = False
    # the written-back weights were not trained with the BatchNorm statistics they meet: re-estimate at evaluation
    reestimate_bn: bool = False

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        if self.side is not None:
            self.side.after_step(model, step)

    def train_mode(self) -> None:
        if self.schedule_free:
            self.optimizer.train()

    @property
    def evaluates_average(self) -> bool:
        """Whether evaluation sees RBWA's average rather than the live weights (not written back at every fold)."""
        return self.reestimate_bn and isinstance(self.optimizer, RBWA) and self.optimizer.averages is not None

    @contextlib.contextmanager
    def evaluated(self, model: nn.Module, bn_batches: Iterable) -> Iterator[nn.Module]:
        """The network to evaluate in the block. A side average (swa, ema) or an RBWA average never written back, or
        between two write-backs, is swapped into the model for the block with BatchNorm re-estimated on it, and the
        live weights and statistics put back after (no copy: FSDP2's shards cannot be deep-copied); before its first
        fold, the live weights. Schedule-free's evaluation point, BatchNorm re-estimated on it."""
        if self.side is not None:
            with self.side.named.swapped(model, bn_batches if self.side.started else None) as net:
                yield net
        elif self.evaluates_average:
            with self.optimizer.averaged(model, bn_batches):
                yield model
        else:
            if self.schedule_free:
                with torch.no_grad():
                    self.optimizer.eval()
                    update_bn(bn_batches, model)
            yield model

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "side": None if self.side is None else self.side.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.side is not None:
            self.side.load_state_dict(state["side"])


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's customary groups: weight decay on weight matrices and embeddings (2 or more dimensions), none on
    biases and normalisation gains. A tied parameter is listed once."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def base_optimizer(cfg: TrainConfig, model: nn.Module) -> Optimizer:
    """SGD (momentum, L2 weight decay on every parameter) or AdamW (decoupled decay on matrices only)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                                 betas=(cfg.adam_beta1, cfg.adam_beta2))
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def build(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> Setup:
    """The optimizer (wrapped for the recurrent methods), LR schedule and side average of ``cfg.method``."""
    cfg = resolve(cfg)  # the start epoch's default follows the run's length
    start = cfg.start_epoch * steps_per_epoch
    if cfg.method == "schedulefree":
        import schedulefree

        if cfg.optimizer == "adamw":
            opt = schedulefree.AdamWScheduleFree(decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                                                 betas=(cfg.adam_beta1, cfg.adam_beta2),
                                                 warmup_steps=cfg.warmup_steps)
        else:
            opt = schedulefree.SGDScheduleFree(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
        return Setup(opt, None, schedule_free=True, reestimate_bn=True)
    base = base_optimizer(cfg, model)
    opt: Optimizer = base
    side = None
    if cfg.method == "rbwa":
        opt = RBWA(base, start_step=start, average="mean", counter=cfg.counter, steps_per_epoch=steps_per_epoch,
                   implementation=cfg.implementation, write_back=cfg.write_back or None)
    elif cfg.method == "rbwa-e":
        opt = RBWA(base, start_step=start, average="ema", beta=cfg.beta, implementation=cfg.implementation,
                   write_back=cfg.write_back or None)
    elif cfg.method == "sema":
        opt = sema(base, steps_per_epoch=steps_per_epoch, beta=cfg.ema_decay, start_step=start)
    elif cfg.method == "rswa":
        opt = rswa(base, steps_per_epoch=steps_per_epoch, start_epoch=cfg.start_epoch)
    elif cfg.method == "lookahead":
        opt = lookahead(base, k=cfg.lookahead_k, alpha=cfg.lookahead_alpha, start_step=start)
    elif cfg.method in ("swa", "ema"):
        side = SideAverage(model, cfg.method, start, steps_per_epoch, cfg.ema_decay)
    total = cfg.epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in (cfg.lr_milestones or [])]

    def factor(step: int) -> float:
        return lr_factor(cfg.lr_schedule, step, total, start, milestones, cfg.lr_gamma, cfg.beta, cfg.warmup_steps,
                         cfg.decay_fraction)

    return Setup(opt, LambdaLR(opt, factor), side, reestimate_bn=reestimates_bn(cfg.method, cfg.write_back))
