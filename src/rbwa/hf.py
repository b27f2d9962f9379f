"""RBWA for the Hugging Face ``Trainer``: a callback that folds after every optimizer step.

    from rbwa.hf import RBWACallback
    trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[RBWACallback(start_epoch=1)])
    trainer.train()                      # trainer.train(resume_from_checkpoint=True) continues identically

The same arguments and fold rule as the Lightning callback and :class:`rbwa.RBWA`. It folds in
``on_step_end``, which the Trainer calls once per optimizer step, so with gradient accumulation it folds
per optimizer step, not per micro-batch. Its state (the average and its counters) is saved beside every
Trainer checkpoint (``checkpoint-N/rbwa_callback.pt``) and read back when training resumes from one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from rbwa.averaging import check_fold_schedule, check_start, fold_into, fold_weight

STATE_FILE = "rbwa_callback.pt"


class RBWACallback(TrainerCallback):
    """Fold the trainable parameters into their average after every optimizer step from ``start_epoch`` on.

    ``steps_per_epoch`` (optimizer steps) is read from the Trainer (``max_steps / num_train_epochs``) unless
    given; give it when training is bounded by ``max_steps`` instead of whole epochs.
    """

    def __init__(self, start_epoch: int = 0, average: str = "mean", beta: float = 0.9, every: int = 1,
                 counter: str = "folds", steps_per_epoch: int | None = None) -> None:
        check_start("start_epoch", start_epoch)
        check_fold_schedule(average, beta, every, counter)
        self.start_epoch, self.average, self.beta, self.every, self.counter = start_epoch, average, beta, every, counter
        self.steps_per_epoch = steps_per_epoch
        self.folds = 0
        self.averages: list[torch.Tensor] | None = None

    def _settings(self) -> list[Any]:
        return [self.start_epoch, self.average, self.beta, self.every, self.counter]

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.steps_per_epoch is None:
            epochs = args.num_train_epochs
            if args.max_steps > 0 or epochs != int(epochs) or state.max_steps % int(epochs):
                raise ValueError("RBWACallback cannot tell the steps per epoch from a max_steps-bounded run; "
                                 "pass steps_per_epoch=")
            self.steps_per_epoch = state.max_steps // int(epochs)
        saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if state.global_step > 0 and os.path.exists(saved):  # resuming from that checkpoint
            self.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        assert model is not None and self.steps_per_epoch is not None
        step = state.global_step - 1  # the optimizer step just taken, counted from 0
        start = self.start_epoch * self.steps_per_epoch
        if step < start or (step - start) % self.every:
            return
        n = (step - start) // self.steps_per_epoch if self.counter == "epochs" else self.folds
        params = [p for p in model.parameters() if p.requires_grad]
        self.averages = fold_into(self.averages, params, fold_weight(self.average, n, self.beta))
        self.folds += 1

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            torch.save(self.state_dict(), os.path.join(folder, STATE_FILE))

    def state_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "averages": self.averages, "settings": self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict["settings"]) != self._settings():
            raise ValueError("RBWACallback state was saved with different settings")
        self.folds = state_dict["folds"]
        self.averages = state_dict["averages"]
