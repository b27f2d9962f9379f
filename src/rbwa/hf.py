"""RBWA for the Hugging Face ``Trainer``: a callback that folds after every optimizer step.

    from rbwa.hf import RBWACallback
    trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[RBWACallback(start_epoch=1)])
    trainer.train()                      # trainer.train(resume_from_checkpoint=True) continues identically

The same arguments and fold rule as the Lightning callback and :class:`rbwa.RBWA`. It folds in
``on_step_end``, which the Trainer calls once per optimizer step, so with gradient accumulation it folds
per optimizer step, not per micro-batch. Its state (the averages, by parameter name, and their counters) is
saved beside every Trainer checkpoint (``checkpoint-N/rbwa_callback-<digest of its settings>.pt``, one file per
callback) with a random token that the Trainer's own
state (``trainer_state.json``, through ``ExportableState``) records too, so a resumed run loads only the file that
belongs to the checkpoint it resumes: never one of another run or another step. Resuming after averaging began from
a checkpoint whose file cannot be found, or does not match, is refused in one line.

Under the Trainer's FSDP2 (Accelerate's, ``fsdp_config={"version": 2}``) each process folds its own shards in place,
as :class:`rbwa.RBWA` does; ``on_save`` gathers the averages whole into the state file (every process takes part)
and a resumed run cuts them back into its shards, so a run may resume at another process count. FSDP1 and DeepSpeed
are refused in one line. Accelerate runs FSDP on GPUs only: the hooks are tested on 2 CPU processes in a plain
FSDP2 loop, the Trainer run by a ``cuda`` test.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import uuid
from typing import Any

import torch
import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from rbwa.averaging.named import SHARDED_CALLBACK, CallbackAverages
from rbwa.checkpoints import snapshots
from rbwa.checkpoints.snapshots import check_snapshot_args
from rbwa.io import atomic_torch_save

STATE_FILE = "rbwa_callback.pt"  # rbwa 0.3's name; each callback now has its own (RBWACallback.state_file)


def refused_sharding(args: TrainingArguments) -> str | None:
    """The Trainer's sharding this callback cannot fold (DeepSpeed, FSDP1), named; None for none or FSDP2."""
    if getattr(args, "deepspeed", None):
        return "the Trainer's DeepSpeed"
    if not getattr(args, "fsdp", None):
        return None
    config = getattr(args, "fsdp_config", None) or {}
    default = 2 if int(transformers.__version__.split(".")[0]) >= 5 else 1  # transformers 5 made FSDP2 the default
    version = int(config.get("version", config.get("fsdp_version", default)))
    return None if version == 2 else f"the Trainer's FSDP{version}"


def resumed_checkpoint() -> str | None:
    """The checkpoint folder the running ``Trainer.train`` resumes from, or None where it cannot be found.

    No callback event carries it: ``Trainer.train`` resolves ``resume_from_checkpoint`` (a path, or True for the
    latest in ``output_dir``) and passes it to ``_inner_training_loop``, which calls ``on_train_begin``; it is read
    from that frame. It only says where to look: a state file found there is used only when its token is the one
    the resumed ``trainer_state.json`` records (a tool that renames the loop makes this None, and the callback then
    looks in ``output_dir/checkpoint-N``, under the same check).
    """
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_inner_training_loop" and "resume_from_checkpoint" in frame.f_locals:
            found = frame.f_locals["resume_from_checkpoint"]
            return None if found is None else str(found)
        frame = frame.f_back
    return None


def recorded_tokens(state: TrainerState) -> list[str]:
    """The tokens that the resumed ``trainer_state.json`` records for the RBWACallbacks of the run (one each)."""
    stored = (state.stateful_callbacks or {}).get("RBWACallback")
    stored = stored if isinstance(stored, list) else [stored]
    return [s["attributes"]["checkpoint_token"] for s in stored
            if isinstance(s, dict) and s.get("attributes", {}).get("checkpoint_token")]


def replaced_callback(cls: type, args: dict[str, Any]) -> Any:
    """The user's callback that the Trainer is rebuilding from its saved arguments, or None.

    With ``restore_callback_states_from_checkpoint=True`` the Trainer's ``_load_callback_state`` builds a new
    callback from the arguments in ``trainer_state.json`` and replaces the user's object with it, which would leave
    the user holding an object that never folds again. The object being replaced is read from that frame, as
    :func:`resumed_checkpoint` reads the resumed folder, so the rebuild returns it instead.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_load_callback_state":
            # the Trainer pairs its callbacks with the saved arguments in order: given in another order, the one of
            # these arguments is the one whose settings they are
            found = [c for c in (frame.f_locals.get("duplicates") or [frame.f_locals.get("callback")])
                     if isinstance(c, cls) and getattr(c, "named", None) is not None]
            same = [c for c in found if all(v == c.arguments().get(k) for k, v in args.items()
                                            if k != "steps_per_epoch")]
            return (same or found or [None])[0]
        frame = frame.f_back
    return None


class RBWACallback(TrainerCallback, ExportableState, CallbackAverages):
    """Fold the trainable parameters into their average after every optimizer step from ``start_epoch`` on.

    Averages are kept by parameter name (:class:`rbwa.averaging.named.NamedAverages`): a parameter unfrozen later
    starts its own average when it joins, and a frozen one keeps its average unchanged. ``averaged(model)`` swaps
    them in for an evaluation (``with callback.averaged(trainer.model): trainer.evaluate()``: the Trainer has no hook
    before an evaluation; before the first fold the live weights are evaluated), ``averaged_state_dict(model)`` is
    the model's state dict with them in place; both unwrap DDP, ``torch.compile`` and Accelerate's wrappers.

    ``steps_per_epoch`` (optimizer steps) is read from the Trainer (``max_steps / num_train_epochs``) unless
    given; give it when training is bounded by ``max_steps`` instead of whole epochs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> RBWACallback:
        # the Trainer rebuilding the user's callback from its saved arguments gets the user's object back
        return replaced_callback(cls, kwargs) or super().__new__(cls)

    def __init__(self, start_epoch: int = 0, average: str = "mean", beta: float = 0.9, every: int = 1,
                 counter: str = "folds", steps_per_epoch: int | None = None, write_back: int | None = 1,
                 average_dtype: torch.dtype | str | None = None) -> None:
        named = self._checked(start_epoch, average, beta, every, counter, write_back, average_dtype)
        if getattr(self, "named", None) is not None:  # the user's object, handed back to a rebuild: keep its state
            if named.settings() != self.named.settings() or start_epoch != self.start_epoch:
                raise ValueError("RBWACallback state was saved with different settings")
            return
        self.named, self.start_epoch, self.steps_per_epoch = named, start_epoch, steps_per_epoch
        self.checkpoint_token: str | None = None  # the token of the checkpoint being saved, or last resumed

    def _more_settings(self) -> dict[str, Any]:
        return {**super()._more_settings(), "steps_per_epoch": self.steps_per_epoch}

    @property
    def state_file(self) -> str:
        """This callback's state file in each checkpoint folder, named by its settings, so that callbacks of other
        settings (an EMA beside an SWA) each keep their own."""
        key = json.dumps([self._settings(), CallbackAverages._more_settings(self)], sort_keys=True)  # as given
        return f"rbwa_callback-{hashlib.sha256(key.encode()).hexdigest()[:8]}.pt"

    def state(self) -> dict[str, Any]:
        """What the Trainer stores in ``trainer_state.json`` as it saves a checkpoint (``ExportableState``): every
        argument, and a new token that ``on_save``, called right after, writes into this checkpoint's state file."""
        self.checkpoint_token = uuid.uuid4().hex  # os.urandom: no random generator of training is touched
        return {"args": self.arguments(), "attributes": {"checkpoint_token": self.checkpoint_token}}

    def arguments(self) -> dict[str, Any]:
        """The arguments that rebuild this callback (``average_dtype`` by its name)."""
        return {"start_epoch": self.start_epoch, **self.named.settings(), "steps_per_epoch": self.steps_per_epoch}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        refused = refused_sharding(args)
        if refused:
            raise ValueError(SHARDED_CALLBACK.format(refused) + '; or train with FSDP2 (fsdp_config={"version": 2}), '
                             "whose shards the callback folds")
        if self.steps_per_epoch is None:
            epochs = args.num_train_epochs
            if args.max_steps > 0 or epochs != int(epochs) or state.max_steps % int(epochs):
                raise ValueError("RBWACallback cannot tell the steps per epoch from a max_steps-bounded run; "
                                 "pass steps_per_epoch=")
            self.steps_per_epoch = state.max_steps // int(epochs)
        if state.global_step == 0:  # a new run (the same callback given to another train()): its own averages
            self.named.reset()
            return
        tokens = recorded_tokens(state)
        started = state.global_step > self.start_epoch * self.steps_per_epoch  # averaging had begun
        where = resumed_checkpoint() or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not tokens:
            if started:
                raise ValueError(f"resuming at step {state.global_step}, after averaging began, from a checkpoint "
                                 "whose trainer_state.json records no RBWACallback token: it was saved without this "
                                 "callback (or by rbwa < 0.3); resume from a checkpoint saved with it")
            return
        name = next((n for n in (self.state_file, STATE_FILE) if os.path.exists(os.path.join(where, n))),
                    self.state_file)
        saved = os.path.join(where, name)
        found = torch.load(saved, map_location="cpu", weights_only=True) if os.path.exists(saved) else None
        if found is not None and found.get("token") in tokens:
            self.load_state_dict(found, state.global_step)
            self.checkpoint_token = found["token"]
        elif started:
            why = (f"finds no {self.state_file} there (this callback's state)" if found is None
                   else f"finds that the {name} there belongs to another checkpoint (its token is not the "
                        "resumed state's)")
            raise ValueError(f"resuming from {where} (step {state.global_step}, after averaging began), but this "
                             f"process {why}: resume from a checkpoint saved with RBWACallback, on a filesystem every "
                             "process sees")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        assert model is not None and self.steps_per_epoch is not None
        t = state.global_step - 1 - self.start_epoch * self.steps_per_epoch  # the step just taken, from the start
        self.named.after_step(model, t, t // self.steps_per_epoch)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        writer = state.is_local_process_zero if args.save_on_each_node else state.is_world_process_zero
        saved = self.state_dict()  # under FSDP2 every process gathers
        if writer and os.path.isdir(folder):
            atomic_torch_save({**saved, "global_step": state.global_step, "token": self.checkpoint_token},
                              os.path.join(folder, self.state_file))

    def state_dict(self) -> dict[str, Any]:
        return self._state()

    def load_state_dict(self, state_dict: dict[str, Any], global_step: int | None = None) -> None:
        """Restore a saved state; ``global_step``, when given, must be the step it was saved at."""
        if global_step is not None and state_dict.get("global_step") != global_step:
            raise ValueError(f"the {self.state_file} found was saved at step {state_dict.get('global_step')}, not at "
                             f"the resumed step {global_step}; it belongs to another checkpoint")
        self._load(state_dict)


class SnapshotCallback(TrainerCallback):
    """Store the model's weights every ``every_n_steps`` optimizer steps as ``<step, 8 digits>.pt`` in ``dirpath``
    (default: ``output_dir/snapshots``), rbwa's one snapshot format (:mod:`rbwa.checkpoints.snapshots`: the step, the
    parameters in ``dtype``, the buffers and the ties, no optimizer state), for ``rbwa merge``: every side average of
    the run, chosen after training, at a fraction of a Trainer checkpoint's bytes. Under FSDP2 every process gathers
    the shards and the first writes the whole model; FSDP1 and DeepSpeed are refused in one line."""

    def __init__(self, every_n_steps: int, dtype: str = "float32", dirpath: str | None = None) -> None:
        check_snapshot_args(every_n_steps, dtype)
        self.every_n_steps, self.dtype, self.dirpath = every_n_steps, dtype, dirpath

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        refused = refused_sharding(args)
        if refused:
            raise ValueError(f"SnapshotCallback cannot gather the weights under {refused}; train with FSDP2 "
                             '(fsdp_config={"version": 2}) or DDP')

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None and state.global_step % self.every_n_steps == 0:  # every process: saving gathers
            snapshots.store(model, self.dirpath or os.path.join(args.output_dir, "snapshots"), state.global_step,
                            self.dtype, write=state.is_world_process_zero)
