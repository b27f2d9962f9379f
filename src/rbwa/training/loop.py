"""train(config) -> a run directory: config.json, metrics.jsonl, summary.json, checkpoint.pt.

Every file is written atomically. A run resumed from its checkpoint ends exactly where an
uninterrupted run ends (same seed, CPU): the checkpoint holds the model, the optimizer with its
averaging state, the LR schedule, the side average, the loader's generator and the metrics so far.

:func:`train` is a short loop over a task (:mod:`~rbwa.training.tasks`: the model, the data, how it is measured) and
a set-up (:mod:`~rbwa.training.methods`: the optimizer, its schedule and averages) joined in a :class:`Session`;
the checkpoint (:mod:`~rbwa.training.checkpoint`), the process group (:mod:`~rbwa.training.distributed`) and the
provenance (:mod:`~rbwa.training.provenance`) each have their own module. Every file of the run directory is
written here, by the first process only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbwa.checkpoints import snapshots
from rbwa.errors import UserError
from rbwa.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from rbwa.models.syncbn import convert_global_bn
from rbwa.training import fsdp
from rbwa.training.checkpoint import check_run_dir, checkpoint_state, load_checkpoint, restore
from rbwa.training.config import TrainConfig, identify, resolve
from rbwa.training.distributed import barrier, init_distributed
from rbwa.training.methods import Setup, build, method_label
from rbwa.training.progress import Progress
from rbwa.training.provenance import version_warning, versions
from rbwa.training.rundir import CHECKPOINT, CONFIG, METRICS, SUMMARY
from rbwa.training.tasks import Task, at_least_float32, evaluate, flat, prepare_task
from rbwa.training.validate import validate


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def write_metrics(out: Path, metrics: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per epoch so far, rewritten whole (atomically)."""
    atomic_write_bytes(out / METRICS, "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics).encode())


def _log_line(out: Path, line: str) -> None:
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def train_epoch(model: nn.Module, forward: nn.Module, setup: Setup, batches: Iterable, step: int,
                amp: bool, loss_weights: list[float] | None = None,
                after: Callable[[int], None] | None = None,
                progress: Progress | None = None) -> tuple[torch.Tensor, float]:
    """One pass over ``batches``; returns (loss sum, correct, count) as one device tensor, and the last LR.
    ``after(steps taken)`` is called after every step (snapshots); ``progress`` is told of each step, with the
    epoch's mean training loss so far read only when shown.

    Nothing here waits for the device: the sums stay on it until the epoch ends.
    """
    model.train()
    setup.train_mode()
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    lr = float("nan")
    for i, (x, y) in enumerate(batches):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, y = flat(forward(x), y)
            loss = nn.functional.cross_entropy(at_least_float32(logits), y)
        # under DDP the gradients are averaged over processes: an uneven share of the last batch is weighted
        weighted = loss if loss_weights is None or loss_weights[i] == 1.0 else loss * loss_weights[i]
        setup.optimizer.zero_grad(set_to_none=True)
        weighted.backward()
        lr = setup.optimizer.param_groups[0]["lr"]
        setup.optimizer.step()
        setup.after_step(model, step)
        step += 1
        if after is not None:
            after(step)
        totals[0] += loss.detach().double() * len(y)
        totals[1] += (logits.detach().argmax(1) == y).sum()
        totals[2] += len(y)
        if progress is not None:
            progress.step(lambda: (totals[0] / totals[2]).item())
    return totals, float(lr)


@dataclass
class Session:
    """This process's part of a run: the config, where it writes, the process's place, the task, and the set-up
    built on it (the model as trained, and ``forward``, what the batches go through: DDP, compiled)."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    identity: dict[str, Any]  # the run's config as config.json and the checkpoint record it
    task: Task
    model: nn.Module
    forward: nn.Module
    setup: Setup
    sharded: bool  # FSDP2 on more than one process
    say: Callable[[str], None]
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch so far
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0  # only the first process writes

    @property
    def steps(self) -> int:
        return len(self.task.train)

    @property
    def amp(self) -> bool:
        return self.cfg.amp == "bf16"


def train(cfg: TrainConfig, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one run; returns its summary. Raises UserError for bad input, Diverged on NaN/Inf loss."""
    cfg = resolved(cfg, resume)
    rank, world, device = init_distributed(cfg)
    out = Path(cfg.out)
    resuming = check_run_dir(cfg, out, resume)
    if resuming and (out / SUMMARY).exists():
        return ended(out)
    identity = identify(cfg) if resuming else None  # computed (and cached) only once the data loads
    ckpt = load_checkpoint(out / CHECKPOINT, identity) if resuming and (out / CHECKPOINT).exists() else None
    session = start(cfg, out, rank, world, device, identity, log)
    first_epoch = continue_from(session, ckpt)
    take_snapshot = snapshot_taker(session)
    if not session.metrics:  # epoch 0: the initial weights, before any training
        t0 = time.perf_counter()
        finish_epoch(session, measured(session, 0, None, None, cfg.lr, t0))
    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc, lr = train_one_epoch(session, epoch, progress, take_snapshot)
        finish_epoch(session, measured(session, epoch, train_loss, train_acc, lr, t0))
    return summarise(session)


def resolved(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """``cfg`` with every default filled in and checked; resumed without a start epoch, the one the run was made
    with."""
    saved_config = Path(cfg.out) / CONFIG
    if resume and cfg.start_epoch is None and saved_config.is_file():  # not given: the start the run was made with
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cfg = dataclasses.replace(cfg, start_epoch=int(json.loads(saved_config.read_text())["start_epoch"]))
    cfg = resolve(cfg)
    validate(cfg)
    return cfg


def ended(out: Path) -> dict[str, Any]:
    """The summary of a run that has ended: finished, or diverged (which cannot be resumed: Diverged)."""
    summary = json.loads((out / SUMMARY).read_text())
    if summary.get("status") == "diverged":
        raise Diverged(f"{out} diverged in epoch {summary.get('epoch')} and cannot be resumed; start a new run "
                       "in another --out (with a lower --lr)")
    return summary


def start(cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device,
          identity: dict[str, Any] | None, log: Callable[[str], None] | None) -> Session:
    """The task and the set-up of a run in this process (the model converted, moved, sharded or wrapped), and the
    run directory with its config.json, written by the first process once every process has checked it."""
    task = prepare_task(cfg, device, rank, world)
    identity = identity or identify(cfg)
    steps = len(task.train)
    if cfg.snapshots_per_epoch is not None and cfg.snapshots_per_epoch > steps:
        raise UserError(f"snapshots per epoch must be at most the {steps} steps of an epoch, got "
                        f"{cfg.snapshots_per_epoch}")
    model = task.model
    if cfg.sync_bn:
        model = convert_global_bn(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sharded = cfg.fsdp and world > 1  # FSDP2 on 1 process would be the unsharded model
    if sharded:
        fsdp.shard(model)
    setup = build(cfg, model, steps)  # after sharding: the optimizer and the averages hold the shards
    forward: nn.Module = model
    if world > 1 and not sharded:
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward = torch.compile(forward, mode=cfg.compile_mode)
    barrier(world)  # every process has checked the run directory before the first one writes to it
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG, identity)
        except OSError as e:
            raise UserError(f"cannot write to --out {out} ({e.strerror}); choose a writable directory") from e
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    return Session(cfg, out, rank, world, device, identity, task, model, forward, setup, sharded, say)


def continue_from(session: Session, ckpt: dict[str, Any] | None) -> int:
    """The first epoch to train: after the checkpoint's (loaded into the session), else 1. Snapshots taken after
    the checkpoint are dropped (they are taken again, on the trajectory it continues); the warnings are said."""
    s = session
    first_epoch = 1
    if ckpt is not None:
        s.metrics, first_epoch = restore(ckpt, s.model, s.setup, s.task.train.generator, s.device, s.sharded)
        if s.main:  # a kill between the checkpoint's write and the metrics' leaves them one epoch apart
            write_metrics(s.out, s.metrics)
    if s.main:
        snapshots.drop_after(s.out, (first_epoch - 1) * s.steps)
    s.provenance = versions()
    warning = version_warning(ckpt.get("versions", {}), s.provenance) if ckpt is not None else None
    if s.cfg.fsdp and s.world == 1:
        warning = "\n".join(filter(None, [warning, "warning: --fsdp with one process (not started by torchrun): "
                                             "nothing to shard, the model trains whole; run under `torchrun "
                                             "--nproc-per-node N` to shard it"]))
    if warning and s.main:
        s.say(warning)
        _log_line(s.out, warning)
    return first_epoch


def snapshot_taker(session: Session) -> Callable[[int], None]:
    """``take(steps taken)``, called after every step: stores a snapshot at the steps the config asks for."""
    s = session
    snapshot_at = set(snapshots.snapshot_steps(s.steps, s.cfg.epochs, s.cfg.snapshot_every, s.cfg.snapshots_per_epoch))

    def take(taken: int) -> None:
        if (s.main or s.sharded) and taken in snapshot_at:  # under FSDP2 every process gathers, the first one writes
            snapshots.write(s.out, taken, s.steps, s.model, s.cfg.snapshot_dtype, save=s.main)
    return take


def train_one_epoch(session: Session, epoch: int, progress: bool | None,
                    take_snapshot: Callable[[int], None]) -> tuple[float, float, float]:
    """Epoch ``epoch``'s training: (its mean training loss, accuracy, last LR) over every process. A NaN or infinite
    loss is recorded in summary.json and raised as Diverged."""
    s = session
    shown = Progress(s.steps, f"{method_label(s.cfg)} epoch {epoch}/{s.cfg.epochs}", progress if s.main else False)
    totals, lr = train_epoch(s.model, s.forward, s.setup, s.task.train, (epoch - 1) * s.steps, s.amp,
                             s.task.train.loss_weights() if s.world > 1 else None, take_snapshot, shown)
    shown.close()
    if s.world > 1:
        torch.distributed.all_reduce(totals)
    train_loss, train_acc = totals[0].item() / totals[2].item(), 100.0 * totals[1].item() / totals[2].item()
    if not math.isfinite(train_loss):
        if s.main:
            atomic_write_json(s.out / SUMMARY, {"status": "diverged", "epoch": epoch, "versions": s.provenance})
        raise Diverged(f"training loss became {train_loss} in epoch {epoch}; the last good checkpoint is kept "
                       f"in {s.out / CHECKPOINT}; start a new run in another --out with a lower --lr")
    return train_loss, train_acc, float(lr)


def measured(session: Session, epoch: int, train_loss: float | None, train_acc: float | None, lr: float,
             t0: float) -> dict[str, Any]:
    """Epoch ``epoch``'s record for metrics.jsonl: the evaluated weights (the set-up's choice) on the test split."""
    s = session
    with s.setup.evaluated(s.model, s.task.bn) as net:
        test_loss, test_acc = evaluate(net, s.task.test, s.amp)
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc, "lr": lr, "seconds": time.perf_counter() - t0, **s.task.bits(test_loss)}


def finish_epoch(session: Session, record: dict[str, Any]) -> None:
    """Record an epoch: its metrics, the checkpoint after it (gathered whole under FSDP2), its line in the log."""
    s, epoch = session, record["epoch"]
    s.metrics.append(record)
    if not (s.main or s.sharded):
        return
    # under FSDP2 every process gathers its shards: the checkpoint is whole, the file a 1-process run writes
    model_state, setup_state = fsdp.whole(s.model.state_dict()), fsdp.whole(s.setup.state_dict())
    if not s.main:
        return
    try:
        atomic_torch_save(checkpoint_state(epoch, model_state, setup_state, s.task.train.generator, s.metrics,
                                           s.provenance, s.device, s.identity), s.out / CHECKPOINT)
        write_metrics(s.out, s.metrics)
    except OSError as e:
        raise UserError(f"cannot write the epoch {epoch} checkpoint in {s.out} ({e.strerror}); the previous "
                        "checkpoint is intact: free some space and rerun with --resume") from e
    line = epoch_line(s.cfg, record, s.task.text)
    _log_line(s.out, line)
    s.say(line)


def epoch_line(cfg: TrainConfig, record: dict[str, Any], text: bool) -> str:
    """An epoch's line in the log, in words. Pure."""
    train_part = "" if record["train_loss"] is None else (
        f"train loss {record['train_loss']:.4f} train acc {record['train_acc']:.2f}%, ")
    measured = (f"validation loss {record['test_loss']:.4f} nats ({record['test_bpc']:.3f} bits per character), "
                f"next-character accuracy {record['test_acc']:.2f}%" if text else
                f"test loss {record['test_loss']:.4f} test acc {record['test_acc']:.2f}%")
    return (f"{method_label(cfg)} epoch {record['epoch']}/{cfg.epochs}: {train_part}{measured} "
            f"({record['seconds']:.1f} s)")


def summarise(session: Session) -> dict[str, Any]:
    """summary.json of a finished run (written by the first process), returned."""
    s, metrics = session, session.metrics
    trained = [m for m in metrics if m["epoch"] > 0]
    best = max(metrics, key=lambda m: m["test_acc"])
    summary = {
        "status": "finished", "method": s.cfg.method, "epochs": s.cfg.epochs,
        "final_test_acc": metrics[-1]["test_acc"], "final_test_loss": metrics[-1]["test_loss"],
        "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
        "final_train_loss": metrics[-1]["train_loss"], "final_train_acc": metrics[-1]["train_acc"],
        "wall_seconds": sum(m["seconds"] for m in metrics), "steps_per_epoch": s.steps,
        "train_size": s.task.train_size, "test_size": s.task.test_size, **s.task.extra,
        "mean_epoch_seconds": sum(m["seconds"] for m in trained) / max(1, len(trained)),
        "versions": s.provenance, "device": str(s.device), "processes": s.world,
    }
    if s.main:
        atomic_write_json(s.out / SUMMARY, summary)
    return summary
