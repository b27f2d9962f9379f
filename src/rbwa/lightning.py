"""RBWA for PyTorch Lightning: a callback that folds after every optimizer step.

    from rbwa.lightning import RBWACallback
    trainer = lightning.Trainer(callbacks=[RBWACallback(start_epoch=10)])
    trainer.fit(model)

The same fold rule as :class:`rbwa.RBWA` (``fold_weight``, ``fold_``); its state (the average and the
counters) goes into Lightning checkpoints, so ``trainer.fit(model, ckpt_path=...)`` resumes exactly.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from rbwa.averaging import (
    SHARDED_CALLBACK,
    Recipes,
    averaged_state_dict,
    check_fold_schedule,
    check_start,
    check_write_back,
    fold_named,
    fold_weight,
    placed_like,
    swapped_in,
    whole,
)
from rbwa.snapshots import check_snapshot_args, save_state


class RBWACallback(pl.Callback, Recipes):
    """Fold the trainable parameters into their average every ``every`` optimizer steps from ``start_epoch`` on, and
    write the average back every ``write_back`` folds (1: the paper's family; None: never, a side average such as an
    EMA or SWA, which validation and testing then see: it is swapped in before them and the live weights back after).

    Averages are kept by parameter name: a parameter unfrozen later starts its own average when it joins, and a
    frozen one keeps its average unchanged. ``average_dtype`` as for :class:`rbwa.RBWA` (float32 averages of bf16
    weights by default). ``averaged_state_dict(module)`` is the module's state dict with the averages in place of its
    parameters: an ordinary checkpoint to load without rbwa.
    """

    def __init__(self, start_epoch: int = 0, average: str = "mean", beta: float = 0.9, every: int = 1,
                 counter: str = "folds", write_back: int | None = 1, average_dtype: torch.dtype | None = None) -> None:
        check_start("start_epoch", start_epoch)
        check_fold_schedule(average, beta, every, counter)
        check_write_back(write_back)
        self.start_epoch, self.average, self.beta, self.every, self.counter = start_epoch, average, beta, every, counter
        self.write_back, self.average_dtype = write_back, average_dtype
        self._swap: Any = None  # the averages swapped in for an evaluation, undone at its end
        self.steps_since_start = 0  # optimizer steps taken since averaging began
        self.folds = 0
        self.averages: dict[str, torch.Tensor] = {}  # parameter name -> its average
        self.counts: dict[str, int] = {}  # parameter name -> folds of its average so far
        self._last_global_step: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse FSDP1 and DeepSpeed before training starts; FSDP2 (ModelParallelStrategy) folds its shards."""
        name = type(trainer.strategy).__name__
        if name in ("FSDPStrategy", "DeepSpeedStrategy"):  # FSDP2's ModelParallelStrategy runs (tested)
            raise ValueError(SHARDED_CALLBACK.format(f"Lightning's {name}") + "; or train with FSDP2 "
                             "(ModelParallelStrategy), whose shards the callback folds")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped = trainer.global_step != self._last_global_step
        self._last_global_step = trainer.global_step
        if not stepped or trainer.current_epoch < self.start_epoch:
            return
        t = self.steps_since_start
        self.steps_since_start += 1
        if t % self.every:
            return
        epochs = trainer.current_epoch - self.start_epoch
        placed_like(self.averages, pl_module)  # averages resumed whole under FSDP2: back into shards
        params = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        back = self.write_back is not None and (self.folds + 1) % self.write_back == 0
        fold_named(self.averages, self.counts, params,
                   lambda folds: fold_weight(self.average, epochs if self.counter == "epochs" else folds, self.beta),
                   back, self.average_dtype)
        self.folds += 1

    # ---- evaluation with the average ------------------------------------------------------------------------
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        placed_like(self.averages, pl_module)
        if self.averages and self._swap is None:
            self._swap = swapped_in(pl_module, self.averages, report_live=True)  # a checkpoint saved meanwhile
            # (by a callback, or the module's own hook) stores the live weights
            self._swap.__enter__()

    def _swap_out(self) -> None:
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap.__exit__(None, None, None)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._swap_out()

    def averaged_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s state dict with each averaged parameter's average (in the parameter's dtype) in its place."""
        return averaged_state_dict(module, self.averages)

    def averaged(self, module: torch.nn.Module) -> Any:
        """A context in which ``module`` holds the averages (the live weights back after), for evaluating by hand."""
        return swapped_in(module, self.averages)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        """The state Lightning checkpoints; FSDP2 shards gathered whole (Lightning writes a callback's state from the
        first process alone), cut back into shards when training resumes."""
        return {"steps_since_start": self.steps_since_start, "folds": self.folds, "averages": whole(self.averages),
                "counts": self.counts, "settings": self._settings()}

    def _settings(self) -> list[Any]:
        settings = [self.start_epoch, self.average, self.beta, self.every, self.counter]
        # added in 0.3: absent (their defaults) from states saved before
        return settings + ([self.write_back] if self.write_back != 1 else [])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict["settings"]) != self._settings():
            raise ValueError("RBWACallback state was saved with different settings")
        if not isinstance(state_dict["averages"], dict) and state_dict["averages"] is not None:
            raise ValueError("RBWACallback state was saved by rbwa < 0.3, which kept averages by position, not by "
                             "name; resume from a checkpoint saved with this version")
        self.steps_since_start = state_dict["steps_since_start"]
        self.folds = state_dict["folds"]
        self.averages = dict(state_dict["averages"] or {})
        self.counts = dict(state_dict.get("counts", {}))


class SnapshotCallback(pl.Callback):
    """Store the model's weights every ``every_n_steps`` optimizer steps as ``dirpath/step-N.pt`` (a state dict in
    ``dtype``; no optimizer state, so a snapshot costs its weights' bytes), for ``rbwa merge dirpath``: every side
    average of the run, chosen after training."""

    def __init__(self, dirpath: str, every_n_steps: int, dtype: str = "float32") -> None:
        check_snapshot_args(every_n_steps, dtype)
        self.dirpath, self.every_n_steps, self.dtype = dirpath, every_n_steps, dtype
        self._last_global_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        stepped, self._last_global_step = step != self._last_global_step, step
        if stepped and step % self.every_n_steps == 0 and trainer.is_global_zero:
            save_state(pl_module, self.dirpath, step, self.dtype)
