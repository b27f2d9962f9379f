"""The RBWA optimizer wrapper and its named recipes: the family's fold (:mod:`rbwa.averaging.fold`) after every
base optimizer step, its averages kept by position in the optimizer's state (so ``state_dict`` carries them)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from rbwa.averaging.fold import (
    Average,
    Counter,
    average_like,
    check_average_dtype,
    check_fold_schedule,
    check_start,
    check_write_back,
    fold_,
    fold_reference_,
    fold_weight,
)
from rbwa.averaging.named import swapped

Implementation = Literal["copy", "lr_scale"]
IMPLEMENTATIONS = ("copy", "lr_scale")
# Optimizers whose update is linear in the learning rate: W' = W - lr * d, with d independent of lr
# (decoupled weight decay, W *= 1 - lr * wd, is linear in lr too). Only these may use lr_scale.
LR_LINEAR_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _check_arguments(
    start_step: int, average: str, beta: float, every: int, counter: str, steps_per_epoch: int | None,
    implementation: str, write_back: int | None = 1,
) -> None:
    check_start("start_step", start_step)
    check_fold_schedule(average, beta, every, counter)
    check_write_back(write_back)
    if counter == "epochs" and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be an integer >= 1 with counter='epochs', got {steps_per_epoch!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


class RBWA(Optimizer):
    """Recurrent weight averaging around any ``torch.optim.Optimizer``.

    Steps are counted from 0. After the base optimizer's step ``t``, when ``t >= start_step`` and
    ``(t - start_step) % every == 0``, the live parameters are folded into the average
    (:func:`fold_weight`) and the average is written back into them.

    Args:
        optimizer: the base optimizer. Its ``param_groups`` are shared, so LR schedulers attached to
            either object act on the same learning rates.
        start_step: first step that folds (the paper: ``start_epoch * steps_per_epoch``).
        average: ``"mean"`` (RBWA, Eq. 2) or ``"ema"`` (RBWA-E, Eq. 4).
        beta: EMA coefficient for ``average="ema"`` (the paper: 0.9).
        every: fold every ``every`` steps (RSWA: ``steps_per_epoch``; Lookahead: ``k``).
        counter: what ``n`` in ``1/(n+1)`` counts for ``average="mean"``: ``"folds"`` so far (the
            default, Eq. 2) or complete ``"epochs"`` since the start (needs ``steps_per_epoch``).
        steps_per_epoch: steps in one epoch, for ``counter="epochs"``.
        implementation: ``"copy"`` keeps the average as a copy of the parameters; ``"lr_scale"``
            runs the identical trajectory by scaling the base optimizer's learning rate by the fold
            weight for the duration of its step, with no extra memory. ``lr_scale`` needs
            ``every=1`` and an optimizer whose update is linear in the learning rate (SGD, Adam,
            AdamW). The user's learning rates are restored after every step, so schedulers and
            ``state_dict`` see their own values.
        foreach: fold all tensors at once with ``torch._foreach_*`` (default) or one at a time.
        write_back: write the average into the live weights every ``write_back`` folds (1, the default:
            every fold, the paper's family); ``None``: never, so the live weights follow the base
            optimizer and ``averages`` is a side average (SWA, EMA). ``lr_scale`` needs 1.
        average_dtype: the averages' dtype; ``None`` (the default) keeps float32 averages of bfloat16 or
            float16 parameters (a 1/(k+1) update below half their precision would round to nothing, and the
            weights would stop moving) and the parameters' own dtype otherwise. Written back, an average is
            rounded to its parameter's dtype.

    Sharded parameters (FSDP2's ``fully_shard``, DTensors) are folded shard by shard on every process, with no
    communication; their averages are DTensors of the same placement, so ``state_dict`` keeps them sharded for
    ``torch.distributed.checkpoint``. ``state_dict`` has the standard ``{"state", "param_groups"}`` form (the
    averages under ``"rbwa_average"`` in each parameter's state, the counters under ``"rbwa"`` in the first
    group), so ``get_optimizer_state_dict`` and ``set_optimizer_state_dict`` carry them too.

    Only the optimizer's parameters are averaged: BatchNorm running statistics are buffers, not
    parameters, and are left alone. They already track the live network, which after every fold
    *is* the average, and averaging them would break the exact learning-rate identity above.
    The base optimizer's state (momentum, Adam moments) is kept across folds, never reset.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_step: int = 0,
        average: Average = "mean",
        beta: float = 0.9,
        every: int = 1,
        counter: Counter = "folds",
        steps_per_epoch: int | None = None,
        implementation: Implementation = "copy",
        foreach: bool = True,
        write_back: int | None = 1,
        average_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"RBWA wraps a torch.optim.Optimizer, got {type(optimizer).__name__}: "
                            "RBWA(torch.optim.SGD(model.parameters(), lr=0.1))")
        if isinstance(optimizer, RBWA):
            raise TypeError("RBWA(RBWA(...)) would fold twice after every step; wrap the base optimizer once")
        _check_arguments(start_step, average, beta, every, counter, steps_per_epoch, implementation, write_back)
        check_average_dtype(average_dtype)
        if implementation == "lr_scale":
            if every != 1:
                raise ValueError(f"implementation='lr_scale' needs every=1, got every={every}")
            if write_back != 1:
                raise ValueError(f"implementation='lr_scale' needs write_back=1, got write_back={write_back}")
            if type(optimizer) not in LR_LINEAR_OPTIMIZERS:
                names = ", ".join(cls.__name__ for cls in LR_LINEAR_OPTIMIZERS)
                raise ValueError(
                    f"implementation='lr_scale' is exact only for optimizers linear in the learning rate "
                    f"({names}); got {type(optimizer).__name__}: use implementation='copy'"
                )
            low = sorted({str(p.dtype) for g in optimizer.param_groups for p in g["params"]
                          if p.dtype in (torch.bfloat16, torch.float16)})
            if low:
                raise ValueError(f"implementation='lr_scale' adds each lr/(k+1) step straight to the {', '.join(low)} "
                                 "parameters, where it rounds away; use implementation='copy', which keeps float32 "
                                 "averages")
        self.optimizer = optimizer
        self.start_step = start_step
        self.average = average
        self.beta = float(beta)
        self.every = every
        self.counter = counter
        self.steps_per_epoch = steps_per_epoch
        self.implementation = implementation
        self.foreach = foreach
        self.write_back = write_back
        self.average_dtype = average_dtype
        self.steps = 0  # base steps taken so far (the next step is number `steps`)
        self.folds = 0  # folds taken so far
        self.averages: list[Tensor] | None = None
        # Share the base optimizer's groups, defaults and hooks machinery (timm's Lookahead does the same).
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state

    # ---- the schedule -------------------------------------------------------------------------
    def folds_at(self, step: int) -> bool:
        """Whether step ``step`` ends with a fold."""
        return step >= self.start_step and (step - self.start_step) % self.every == 0

    def weight_at(self, step: int, folds: int) -> float:
        """Weight of the new snapshot if step ``step`` folds, ``folds`` folds having been taken before it."""
        if self.counter == "epochs":
            assert self.steps_per_epoch is not None
            n = (step - self.start_step) // self.steps_per_epoch
        else:
            n = folds
        return fold_weight(self.average, n, self.beta)

    def lr_multipliers(self, steps: int) -> list[float]:
        """The factor on the learning rate of each of the first ``steps`` steps, by this wrapper's own fold rule.

        Because every step starts from the average, a fold with weight w is exactly a base step with its
        learning rate times w (the identity the tests check); steps that do not fold keep the full rate.
        """
        out, folds = [], 0
        for t in range(steps):
            folding = self.folds_at(t)
            out.append(self.weight_at(t, folds) if folding else 1.0)
            folds += int(folding)
        return out

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _new_averages(self) -> list[Tensor]:
        return [average_like(p, self.average_dtype) for p in self._params()]

    # ---- Optimizer interface --------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        t = self.steps
        folding = self.folds_at(t)
        weight = self.weight_at(t, self.folds) if folding else 1.0
        if self.implementation == "lr_scale" and weight != 1.0:
            user_lrs = [group["lr"] for group in self.param_groups]
            for group in self.param_groups:
                group["lr"] = group["lr"] * weight
            try:
                loss = self.optimizer.step(closure)
            finally:
                for group, lr in zip(self.param_groups, user_lrs, strict=True):
                    group["lr"] = lr
        else:
            loss = self.optimizer.step(closure)
        if folding and self.implementation == "copy":
            params = self._params()
            if self.averages is None:
                self.averages = self._new_averages()
            elif len(params) != len(self.averages):
                raise RuntimeError(f"the base optimizer holds {len(params)} parameters but RBWA averages "
                                   f"{len(self.averages)}: a parameter group was added to it after averaging began; "
                                   "add groups before the start step")
            back = self.write_back is not None and (self.folds + 1) % self.write_back == 0
            (fold_ if self.foreach else fold_reference_)(self.averages, params, weight, back)
        self.steps += 1
        self.folds += int(folding)
        return loss

    # torch.optim.Optimizer pickles only defaults, state and param_groups: a copy would lose the base optimizer,
    # the counters and the averages
    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups is not self.optimizer.param_groups:  # inside Optimizer.__init__
            super().add_param_group(param_group)
        elif self.averages is not None:
            raise RuntimeError("cannot add a parameter group after averaging has started")
        else:
            self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict, with each parameter's average in its state (``"rbwa_average"``) and the
        counters in the first group (``"rbwa"``). Before the first fold the averages are copies of the parameters,
        marked not started, so a template made from a fresh wrapper (as ``torch.distributed.checkpoint`` loads
        into) already holds every tensor it will load."""
        base = self.optimizer.state_dict()
        state = {i: dict(s) for i, s in base["state"].items()}
        if self.implementation == "copy":
            averages = self.averages if self.averages is not None else self._new_averages()
            for i, avg in enumerate(averages):
                state.setdefault(i, {})[AVERAGE_KEY] = avg
        groups = [dict(g) for g in base["param_groups"]]
        groups[0][COUNTERS_KEY] = {"settings": self._settings(), "steps": self.steps, "folds": self.folds,
                               "started": self.averages is not None}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if isinstance(state_dict, dict) and set(state_dict) == {"base", "rbwa"}:  # the form of rbwa < 0.3
            state_dict = _from_old_form(state_dict)
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not groups or COUNTERS_KEY not in groups[0]:
            raise ValueError("not an RBWA state_dict: its first parameter group has no 'rbwa' counters")
        ours = groups[0][COUNTERS_KEY]
        # a setting added later (write_back, average_dtype) was at its default in states saved before it existed
        differing = sorted(k for k, v in self._settings().items() if ours["settings"].get(k, LATER.get(k)) != v)
        if differing:
            raise ValueError(f"RBWA state_dict was saved with different settings: {', '.join(differing)}")
        params = self._params()
        # the saved state is keyed as the saved groups list their parameters, in order (indices, or names when
        # torch.distributed.checkpoint's set_optimizer_state_dict passes it on)
        keys = [key for g in groups for key in g["params"]]
        saved = [state_dict["state"].get(key, {}).get(AVERAGE_KEY) for key in keys]
        base_state = {i: rest for i, s in state_dict["state"].items()
                      if (rest := {k: v for k, v in s.items() if k != AVERAGE_KEY})}
        self.optimizer.load_state_dict({"state": base_state, "param_groups": [
            {k: v for k, v in g.items() if k != COUNTERS_KEY} for g in groups]})
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.steps = int(ours["steps"])
        self.folds = int(ours["folds"])
        self.averages = None
        if ours["started"] and self.implementation == "copy":
            if len(saved) != len(params) or any(a is None for a in saved):
                raise ValueError(f"RBWA state_dict holds {sum(a is not None for a in saved)} averages for "
                                 f"{len(params)} parameters")
            self.averages = [average_like(p, self.average_dtype) for p in params]
            fold_(self.averages, saved, 1.0)  # copies each saved average into place, shard by shard

    @contextlib.contextmanager
    def averaged(self, module: torch.nn.Module, bn_batches: Iterable | None = None) -> Iterator[torch.nn.Module]:
        """Evaluate with the average: put it into ``module``'s parameters for the duration of the ``with`` block and
        the live weights back on exit, also on an exception. Before the first fold there is no average, and the
        live weights stay.

        Inside the block, ``module.state_dict()`` still reports the live weights and this optimizer's state dict
        the averages, so a checkpoint written there stores each as it is, never one in place of the other. The
        swap is in place, so a ``torch.compile``d module sees it. BatchNorm's running statistics are buffers, not
        averaged: they were gathered on the live weights (which, for a member written back at every fold, *are*
        the average). With ``bn_batches`` (input batches, or (input, target) batches), they are re-estimated on the
        average by ``torch.optim.swa_utils.update_bn`` inside the block and the live statistics restored on exit.
        Under FSDP2 each process swaps its own shards, with no communication.
        """
        if self.averages is None:
            yield module
            return
        with swapped(module, self._params(), self.averages, report_live=True, bn_batches=bn_batches):
            yield module

    def _settings(self) -> dict[str, Any]:
        return {
            "start_step": self.start_step, "average": self.average, "beta": self.beta, "every": self.every,
            "counter": self.counter, "steps_per_epoch": self.steps_per_epoch,
            "implementation": self.implementation, "write_back": self.write_back,
            "average_dtype": None if self.average_dtype is None else str(self.average_dtype),
        }

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"RBWA({settings}, optimizer={self.optimizer!r})"


LATER = {"write_back": 1, "average_dtype": None}  # settings added after rbwa 0.1, with the value earlier states had
AVERAGE_KEY, COUNTERS_KEY = "rbwa_average", "rbwa"  # where state_dict keeps a parameter's average and the counters


def _from_old_form(old: dict[str, Any]) -> dict[str, Any]:
    """A state dict of rbwa < 0.3 (``{"base": ..., "rbwa": ...}``) in the standard form."""
    ours, base = old["rbwa"], old["base"]
    state = {i: dict(s) for i, s in base["state"].items()}
    for i, avg in enumerate(ours["averages"] or []):
        state.setdefault(i, {})[AVERAGE_KEY] = avg
    groups = [dict(g) for g in base["param_groups"]]
    groups[0][COUNTERS_KEY] = {"settings": ours["settings"], "steps": ours["steps"], "folds": ours["folds"],
                           "started": ours["averages"] is not None}
    return {"state": state, "param_groups": groups}


# ---- named recipes ------------------------------------------------------------------------------
def rbwa(optimizer: Optimizer, start_step: int = 0, **kwargs: Any) -> RBWA:
    """RBWA (Algorithm 2): equal-weight mean after every batch."""
    return RBWA(optimizer, start_step=start_step, average="mean", **kwargs)


def rbwa_e(optimizer: Optimizer, start_step: int = 0, beta: float = 0.9, **kwargs: Any) -> RBWA:
    """RBWA-E (section 3.3): EMA with ``beta`` after every batch; exactly LR x (1 - beta)."""
    return RBWA(optimizer, start_step=start_step, average="ema", beta=beta, **kwargs)


def rswa(optimizer: Optimizer, steps_per_epoch: int, start_epoch: int = 0) -> RBWA:
    """Recurrent SWA: fold once per epoch, at the end of every epoch from ``start_epoch`` on."""
    return RBWA(optimizer, start_step=(start_epoch + 1) * steps_per_epoch - 1, average="mean",
                every=steps_per_epoch)


def sema(optimizer: Optimizer, steps_per_epoch: int, beta: float = 0.999, start_step: int = 0) -> RBWA:
    """Switch EMA (Li et al. 2024): an EMA of the weights every step, switched into the live weights at the end
    of every epoch (counted from ``start_step``)."""
    return RBWA(optimizer, start_step=start_step, average="ema", beta=beta, write_back=steps_per_epoch)


def lookahead(optimizer: Optimizer, k: int = 5, alpha: float = 0.5, start_step: int = 0) -> RBWA:
    """Lookahead (Zhang et al. 2019): slow weights <- slow + alpha * (fast - slow) every ``k`` steps.

    One difference from the original: the slow weights start at the weights after the first ``k``
    steps (the first fold takes the live weights as they are), not at the initial weights.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    return RBWA(optimizer, start_step=start_step + k - 1, average="ema", beta=1.0 - alpha, every=k)

