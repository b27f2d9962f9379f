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

from rbwa.averaging.named import SHARDED_CALLBACK, CallbackAverages
from rbwa.checkpoints import snapshots
from rbwa.checkpoints.snapshots import check_snapshot_args

REFUSED = ("FSDPStrategy", "DeepSpeedStrategy")  # FSDP1, DeepSpeed: shardings the callbacks cannot gather or fold


class StepWatch(pl.Callback):
    """What both callbacks share: FSDP1 and DeepSpeed refused before training (``refusal``, where the strategy's
    name goes), and whether a batch's end follows an optimizer step (not under gradient accumulation)."""

    refusal = "{} is refused"
    _last_global_step: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name = type(trainer.strategy).__name__
        if name in REFUSED:
            raise ValueError(self.refusal.format(f"Lightning's {name}"))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step

    def stepped(self, trainer: pl.Trainer) -> bool:
        """True once per optimizer step, at the end of the batch that took it."""
        stepped, self._last_global_step = trainer.global_step != self._last_global_step, trainer.global_step
        return stepped


class RBWACallback(StepWatch, CallbackAverages):
    """Fold the trainable parameters into their average every ``every`` optimizer steps from ``start_epoch`` on, and
    write the average back every ``write_back`` folds (1: the paper's family; None: never, a side average such as an
    EMA or SWA, which validation and testing then see: it is swapped in before them and the live weights back after;
    before the first fold they see the live weights).

    Averages are kept by parameter name (:class:`rbwa.averaging.named.NamedAverages`): a parameter unfrozen later
    starts its own average when it joins, and a frozen one keeps its average unchanged. ``average_dtype`` as for
    :class:`rbwa.RBWA` (float32 averages of bf16 weights by default). ``averaged_state_dict(module)`` is the module's
    state dict with the averages in place of its parameters: an ordinary checkpoint to load without rbwa;
    ``averaged(module)`` swaps them in for an evaluation by hand. Both unwrap DDP and ``torch.compile``.
    """

    refusal = (SHARDED_CALLBACK.format("{}") + "; or train with FSDP2 (ModelParallelStrategy), whose shards the "
               "callback folds")

    def __init__(self, start_epoch: int = 0, average: str = "mean", beta: float = 0.9, every: int = 1,
                 counter: str = "folds", write_back: int | None = 1, average_dtype: torch.dtype | None = None) -> None:
        self.named = self._checked(start_epoch, average, beta, every, counter, write_back, average_dtype)
        self.start_epoch = start_epoch
        self._swap: Any = None  # the averages swapped in for an evaluation, undone at its end
        self.steps_since_start = 0  # optimizer steps taken since averaging began

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step == 0:  # a new run (the same callback given to another fit): its own averages
            self.named.reset()
            self.steps_since_start = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.stepped(trainer) or trainer.current_epoch < self.start_epoch:
            return
        self.steps_since_start += 1
        self.named.after_step(pl_module, self.steps_since_start - 1, trainer.current_epoch - self.start_epoch)

    # ---- evaluation with the average ------------------------------------------------------------------------
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if self._swap is None:
            # a checkpoint saved meanwhile (by a callback, or the module's own hook) stores the live weights
            self._swap = self.named.swapped(pl_module, report_live=True)
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

    @property
    def state_key(self) -> str:
        """Where Lightning keeps this callback's state in a checkpoint: one key per settings, so that callbacks of
        other settings (an EMA beside an SWA) share a Trainer."""
        return self._generate_state_key(settings=self._settings(), more=self._more_settings())

    def state_dict(self) -> dict[str, Any]:
        """The state Lightning checkpoints; FSDP2 shards gathered whole (Lightning writes a callback's state from the
        first process alone), cut back into shards when training resumes."""
        return {**self._state(), "steps_since_start": self.steps_since_start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load(state_dict)
        self.steps_since_start = state_dict["steps_since_start"]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("callbacks", {})
        if self.state_key in saved:
            return
        if "RBWACallback" in saved:  # rbwa 0.3 kept it under the class's name
            self.load_state_dict(saved["RBWACallback"])
            return
        ours = {c.state_key for c in trainer.callbacks if isinstance(c, RBWACallback)}
        if any(str(key).startswith("RBWACallback{") and key not in ours for key in saved):
            raise ValueError("RBWACallback state was saved with different settings (the checkpoint holds an "
                             "RBWACallback state under other settings, and none under these)")


class SnapshotCallback(StepWatch):
    """Store the model's weights every ``every_n_steps`` optimizer steps as ``dirpath/<step, 8 digits>.pt``, rbwa's
    one snapshot format (:mod:`rbwa.checkpoints.snapshots`: the step, the parameters in ``dtype``, the buffers and the
    ties; no optimizer state, so a snapshot costs its weights' bytes), for ``rbwa merge dirpath``: every side average
    of the run, chosen after training. Under FSDP2 every process gathers the shards and the first writes the whole
    model; FSDP1 and DeepSpeed are refused in one line."""

    refusal = "SnapshotCallback cannot gather the weights under {}; train with FSDP2 (ModelParallelStrategy) or DDP"

    def __init__(self, dirpath: str, every_n_steps: int, dtype: str = "float32") -> None:
        check_snapshot_args(every_n_steps, dtype)
        self.dirpath, self.every_n_steps, self.dtype = dirpath, every_n_steps, dtype

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # every process: under FSDP2 saving gathers the shards
        if self.stepped(trainer) and step % self.every_n_steps == 0:
            snapshots.store(pl_module, self.dirpath, step, self.dtype, write=trainer.is_global_zero)
