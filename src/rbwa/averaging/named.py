"""Averages kept by parameter name: the one home of the trainer's side averages (``--method ema|swa``), the Lightning
and Hugging Face callbacks, and what their snapshots and evaluations share.

:class:`NamedAverages` holds, for each trainable parameter by name, its average (float32 for bfloat16 or float16
weights, else the weight's dtype, or ``average_dtype``) and its fold count. It decides when a step folds, folds
(the family's rule, :mod:`rbwa.averaging.fold`), writes back every ``write_back`` folds, swaps the averages into a
module for an evaluation (DDP, ``torch.compile`` and Accelerate wrappers unwrapped; a name that matches no parameter
refused; FSDP2 modules resharded first, and averages restored whole from a checkpoint cut back into shards), and
gives a whole ``state_dict`` out. Before the first fold there is no average: what is evaluated is the live weights,
as :meth:`rbwa.RBWA.averaged` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from rbwa.averaging.dtensor import placed_like, reshard, whole
from rbwa.averaging.fold import (
    check_average_dtype,
    check_fold_schedule,
    check_start,
    check_write_back,
    fold_,
    fold_named,
    fold_weight,
)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP, DataParallel, ``torch.compile`` and Accelerate's wrappers (which are these),
    whose parameter names carry a prefix (``module.``, ``_orig_mod.``) that the averages' names do not."""
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, torch.nn.Module):
            module = module._orig_mod
        else:
            return module


def averaged_state_dict(module: torch.nn.Module, averages: dict[str, Tensor]) -> dict[str, Tensor]:
    """``module``'s state dict with each named average (in its parameter's dtype) in place of the parameter, under
    every name a tied parameter has: an ordinary checkpoint of the averaged model, loadable without rbwa."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    canonical = {id(p): name for name, p in module.named_parameters()}  # a tied parameter's first name
    for name, p in module.named_parameters(remove_duplicate=False):
        average = averages.get(canonical[id(p)])
        if average is not None and name in state:
            state[name] = average.to(p.dtype).clone()
    return state


@contextlib.contextmanager
def swapped(module: torch.nn.Module, params: list[Tensor], averages: list[Tensor], report_live: bool = False,
            bn_batches: Iterable | None = None) -> Iterator[None]:
    """Put each average into its parameter for the block, the live weights back after, also on an error. Under
    FSDP2 each process swaps its own shards, resharding first and after: no unsharded copy of the live weights may
    outlive the swap, nor one of the averages outlive the block. With ``report_live``, ``module.state_dict()`` inside
    the block reports the live weights, under every name a tied parameter has, so that a checkpoint written there
    stores them, never the averages in their place. With ``bn_batches`` (inputs, or (input, target) batches),
    BatchNorm's running statistics are re-estimated on the averages (``swa_utils.update_bn``) inside the block and
    the live ones restored after."""
    reshard(module)
    live = {id(p): p.detach().clone() for p in params}
    buffers = [b.detach().clone() for b in module.buffers()] if bn_batches is not None else None

    def report(mod: torch.nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
        for name, p in mod.named_parameters(remove_duplicate=False):
            if id(p) in live and prefix + name in state:
                state[prefix + name] = live[id(p)]

    hook = module.register_state_dict_post_hook(report) if report_live else None
    fold_(params, averages, 1.0)  # params <- averages, rounded to the parameters' dtype
    try:
        if bn_batches is not None:
            from torch.optim.swa_utils import update_bn

            update_bn(bn_batches, module)
        yield
    finally:
        if hook is not None:
            hook.remove()
        reshard(module)
        fold_(params, [live[id(p)] for p in params], 1.0)
        if buffers is not None:
            with torch.no_grad():
                for b, saved in zip(module.buffers(), buffers, strict=True):
                    b.copy_(saved)


SETTINGS = ("average", "beta", "every", "counter", "write_back", "average_dtype")  # NamedAverages' own


class NamedAverages:
    """The averages of a module's trainable parameters, by name (see the module's docstring).

    The caller says how many optimizer steps have been taken since averaging began (``t``, the step just taken
    counted from 0) and, for ``counter="epochs"``, how many whole epochs; :meth:`after_step` folds when
    ``t % every == 0``: ``every=1`` folds after every step (RBWA, RBWA-E, an EMA), ``every=steps_per_epoch`` once an
    epoch (SWA, RSWA), ``every=k`` Lookahead's. ``write_back``: 1 writes the average into the weights at every fold
    (the paper's family), ``k`` every k folds (Switch EMA), None never (a side average).
    """

    def __init__(self, average: str = "mean", beta: float = 0.9, every: int = 1, counter: str = "folds",
                 write_back: int | None = 1, average_dtype: torch.dtype | None = None) -> None:
        check_fold_schedule(average, beta, every, counter)
        check_write_back(write_back)
        check_average_dtype(average_dtype)
        self.average, self.beta, self.every, self.counter = average, float(beta), every, counter
        self.write_back, self.average_dtype = write_back, average_dtype
        self.averages: dict[str, Tensor] = {}  # parameter name -> its average
        self.counts: dict[str, int] = {}  # parameter name -> folds of its average so far
        self.folds = 0

    def reset(self) -> None:
        """Forget every average: a new run from step 0 starts its own."""
        self.averages, self.counts, self.folds = {}, {}, 0

    def settings(self) -> dict[str, Any]:
        """Each of :data:`SETTINGS`, the dtype by its name (as saved in a state, and as a callback is rebuilt)."""
        return {**{k: getattr(self, k) for k in SETTINGS},
                "average_dtype": None if self.average_dtype is None else str(self.average_dtype)}

    def after_step(self, module: torch.nn.Module, t: int, epochs: int = 0) -> bool:
        """Fold ``module``'s trainable parameters if step ``t`` (counted from averaging's start) is due; whether
        it folded."""
        if t < 0 or t % self.every:
            return False
        self.fold(module, epochs)
        return True

    def fold(self, module: torch.nn.Module, epochs: int = 0) -> None:
        module = unwrap(module)
        placed_like(self.averages, module)  # averages resumed whole under FSDP2: back into this process's shards
        params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        back = self.write_back is not None and (self.folds + 1) % self.write_back == 0
        fold_named(self.averages, self.counts, params,
                   lambda folds: fold_weight(self.average, epochs if self.counter == "epochs" else folds, self.beta),
                   back, self.average_dtype)
        self.folds += 1

    def _matched(self, module: torch.nn.Module) -> torch.nn.Module:
        module = unwrap(module)
        names = {name for name, _ in module.named_parameters()}
        unmatched = sorted(set(self.averages) - names)
        if unmatched:
            raise ValueError(f"{type(module).__name__} has no parameter named {', '.join(unmatched[:3])}"
                             f"{', ...' if len(unmatched) > 3 else ''} ({len(unmatched)} of {len(self.averages)} "
                             "averages): pass the module whose parameters were averaged")
        placed_like(self.averages, module)
        return module

    @contextlib.contextmanager
    def swapped(self, module: torch.nn.Module, bn_batches: Iterable | None = None,
                report_live: bool = False) -> Iterator[torch.nn.Module]:
        """``module`` (unwrapped) holding the averages for the block, the live weights back after, also on an error;
        before the first fold, the live weights as they are. With ``bn_batches``, BatchNorm's running statistics are
        re-estimated on the averages (``swa_utils.update_bn``) and the live ones restored after. With
        ``report_live``, ``module.state_dict()`` inside the block reports the live weights."""
        if not self.averages:
            yield unwrap(module)
            return
        module = self._matched(module)
        reshard(module)  # first: an unsharded FSDP2 module lists its unsharded copies, which resharding frees
        named = [(p, self.averages[name]) for name, p in module.named_parameters() if name in self.averages]
        with swapped(module, [p for p, _ in named], [a for _, a in named], report_live, bn_batches):
            yield module

    def averaged_state_dict(self, module: torch.nn.Module) -> dict[str, Tensor]:
        """``module``'s state dict with each average (in its parameter's dtype) in place of the parameter, under every
        name a tied parameter has, whole (under FSDP2 a collective: every process calls it); the live weights before
        the first fold."""
        return whole(averaged_state_dict(self._matched(module), self.averages))

    def state_dict(self) -> dict[str, Any]:
        """The averages whole (under FSDP2 a collective), their counts, the folds and the settings."""
        return {"averages": whole(self.averages), "counts": dict(self.counts), "folds": self.folds,
                "settings": self.settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; whole averages are cut back into FSDP2 shards at the next fold or swap."""
        saved = state.get("settings", {})
        differing = sorted(k for k, v in self.settings().items() if saved.get(k, v) != v)
        if differing:
            raise ValueError(f"the saved averages were made with different settings: {', '.join(differing)}")
        self.averages = dict(state["averages"] or {})
        self.counts = dict(state.get("counts", {}))
        self.folds = int(state["folds"])


class Recipes:
    """The family's members by name, for the framework callbacks (``RBWACallback.ema(beta=0.999)``); each is the
    callback with the settings that make it that member, as the wrapper's recipes are."""

    @classmethod
    def rbwa(cls, start_epoch: int = 0, **kwargs: Any) -> Any:
        """RBWA: an equal-weight mean after every step, written back."""
        return cls(start_epoch=start_epoch, average="mean", **kwargs)

    @classmethod
    def rbwa_e(cls, start_epoch: int = 0, beta: float = 0.9, **kwargs: Any) -> Any:
        """RBWA-E: an EMA after every step, written back."""
        return cls(start_epoch=start_epoch, average="ema", beta=beta, **kwargs)

    @classmethod
    def lookahead(cls, k: int = 5, alpha: float = 0.5, start_epoch: int = 0, **kwargs: Any) -> Any:
        """Lookahead's rule: slow <- slow + alpha (fast - slow) every ``k`` steps, the slow weights taken at the
        start."""
        return cls(start_epoch=start_epoch, average="ema", beta=1.0 - alpha, every=k, **kwargs)

    @classmethod
    def switch_ema(cls, steps_per_epoch: int, beta: float = 0.999, start_epoch: int = 0, **kwargs: Any) -> Any:
        """Switch EMA: an EMA every step, written back once an epoch (``steps_per_epoch`` optimizer steps)."""
        return cls(start_epoch=start_epoch, average="ema", beta=beta, write_back=steps_per_epoch, **kwargs)

    @classmethod
    def ema(cls, beta: float = 0.999, start_epoch: int = 0, **kwargs: Any) -> Any:
        """An EMA side average: never written back; what evaluation sees."""
        return cls(start_epoch=start_epoch, average="ema", beta=beta, write_back=None, **kwargs)

    @classmethod
    def swa(cls, steps_per_epoch: int, start_epoch: int = 0, **kwargs: Any) -> Any:
        """An SWA side average: the equal-weight mean of the weights at every epoch's first step from the start,
        never written back."""
        return cls(start_epoch=start_epoch, average="mean", every=steps_per_epoch, write_back=None, **kwargs)


SHARDED_CALLBACK = ("RBWACallback does not run under {}; wrap the optimizer in rbwa.RBWA instead, which folds FSDP2 "
                    "shards in place (README: sharded training)")


class CallbackAverages(Recipes):
    """What the framework callbacks share: a :class:`NamedAverages` (``self.named``) and its view for users."""

    named: NamedAverages

    @staticmethod
    def _checked(start_epoch: int, average: str, beta: float, every: int, counter: str, write_back: int | None,
                 average_dtype: torch.dtype | str | None) -> NamedAverages:
        check_start("start_epoch", start_epoch)
        if isinstance(average_dtype, str):  # a name, as a framework rebuilds a callback from its saved arguments
            average_dtype = getattr(torch, average_dtype.removeprefix("torch."), average_dtype)
        return NamedAverages(average, beta, every, counter, write_back, average_dtype)

    def __getattr__(self, name: str) -> Any:  # the settings, read through: callback.beta, callback.write_back
        if name in SETTINGS and "named" in self.__dict__:
            return getattr(self.named, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def averages(self) -> dict[str, Tensor]:
        return self.named.averages

    @property
    def counts(self) -> dict[str, int]:
        return self.named.counts

    @property
    def folds(self) -> int:
        return self.named.folds

    def _settings(self) -> list[Any]:
        """The settings as rbwa 0.3 saved them (write_back only where it is not 1), compared on resume."""
        n = self.named
        return [self.start_epoch, n.average, n.beta, n.every, n.counter] + ([n.write_back] if n.write_back != 1 else [])

    def _more_settings(self) -> dict[str, Any]:
        """The settings added since 0.3, compared on resume where a state records them."""
        return {"average_dtype": self.named.settings()["average_dtype"]}

    def _state(self) -> dict[str, Any]:
        return {**self.named.state_dict(), "settings": self._settings(), "more_settings": self._more_settings()}

    def _load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_state` (or one saved by rbwa 0.3), refusing other settings in one line."""
        if list(state["settings"]) != self._settings() or \
                state.get("more_settings", self._more_settings()) != self._more_settings():
            raise ValueError("RBWACallback state was saved with different settings")
        if not isinstance(state["averages"], dict) and state["averages"] is not None:
            raise ValueError("RBWACallback state was saved by rbwa < 0.3, which kept averages by position, not by "
                             "name; resume from a checkpoint saved with this version")
        self.named.load_state_dict({**state, "settings": {}})

    def averaged_state_dict(self, module: torch.nn.Module) -> dict[str, Tensor]:
        """``module``'s state dict with each average in place of its parameter (``NamedAverages.averaged_state_dict``):
        an ordinary checkpoint to load without rbwa. DDP and ``torch.compile`` wrappers are unwrapped."""
        return self.named.averaged_state_dict(module)

    def averaged(self, module: torch.nn.Module, bn_batches: Iterable | None = None) -> Any:
        """A context in which ``module`` holds the averages, the live weights back after, for evaluating by hand:
        ``with callback.averaged(model): evaluate(model)``. Before the first fold the live weights stay; with
        ``bn_batches`` BatchNorm is re-estimated on the averages and restored after."""
        return self.named.swapped(module, bn_batches)
