"""train(config) -> a run directory: config.json, metrics.jsonl, summary.json, checkpoint.pt.

Every file is written atomically. A run resumed from its checkpoint ends exactly where an
uninterrupted run ends (same seed, CPU): the checkpoint holds the model, the optimizer with its
averaging state, the LR schedule, the side average, the loader's generator and the metrics so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rbwa import __version__
from rbwa.checkpoints import snapshots
from rbwa.data import Split, is_text, load_dataset, stratified_indices
from rbwa.data.loader import BatchLoader, TokenLoader, channel_stats
from rbwa.errors import UserError
from rbwa.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from rbwa.models import build_model
from rbwa.models.syncbn import convert_global_bn
from rbwa.training import fsdp
from rbwa.training.config import TrainConfig, differing_keys, identify, resolve, validate
from rbwa.training.methods import Setup, build
from rbwa.training.progress import Progress
from rbwa.training.resources import available_bytes, estimate_bytes, human
from rbwa.training.rundir import CHECKPOINT, CONFIG, METRICS, SUMMARY


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def cpu_kind(cpuinfo: str, capability: str, fallback: str = "") -> str:
    """The CPU that float rounding depends on, from the text of /proc/cpuinfo (empty elsewhere: ``fallback``,
    the platform's processor name) and the vector instructions torch dispatches to.

    >>> cpu_kind("model name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 207\n", "AVX512")
    'Intel(R) Xeon(R) Processor (family 6, model 207), torch AVX512'
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fallback or "unknown CPU"
    numbers = ", ".join(f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
                        if fields.get(key))
    return f"{name}{f' ({numbers})' if numbers else ''}, torch {capability}"


def versions() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"rbwa": __version__, "git": commit, "torch": str(torch.__version__), "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(), "cpu": _this_cpu()}


def _this_cpu() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return cpu_kind(cpuinfo, torch.backends.cpu.get_cpu_capability(), platform.processor())


def method_label(cfg: TrainConfig) -> str:
    """What a run trains, in words: its method, with the base optimizer named where the method is none (``sgd``
    with AdamW is plain AdamW) and a schedule other than constant. Pure."""
    base = cfg.optimizer if cfg.method == "sgd" else cfg.method
    return base + ("" if cfg.lr_schedule == "constant" else f" ({cfg.lr_schedule} LR)")


def prepare_data(cfg: TrainConfig) -> tuple[Split, Split]:
    train, test = load_dataset(cfg.dataset, Path(cfg.data_dir or "."), Path(cfg.cache_dir or "."), cfg.image_size)
    if cfg.train_subset is not None:
        train = train.subset(stratified_indices(train.labels, cfg.train_subset, cfg.subset_seed, "train subset"))
    if cfg.test_subset is not None:
        test = test.subset(stratified_indices(test.labels, cfg.test_subset, cfg.subset_seed, "test subset"))
    if len(train) < 2:
        raise UserError("the training split needs at least 2 images")
    return train, test


def flat(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets as (predictions, classes) and (predictions,): an image's one prediction, or a language
    model's one per token. Pure."""
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


@dataclass
class Task:
    """What a run trains on and is measured with: image classification or character language modelling."""

    model: nn.Module
    train: BatchLoader | TokenLoader  # shuffled, the global batch split across processes
    bn: BatchLoader | TokenLoader  # the training split in order (BatchNorm re-estimation; a no-op without it)
    test: BatchLoader | TokenLoader
    train_size: int  # images, or tokens predicted in an epoch
    test_size: int  # the same for the test (validation) split
    text: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more for summary.json (a text's vocabulary size)

    def bits(self, test_loss: float) -> dict[str, float]:
        """A language model's validation loss in bits per character, beside its nats (nothing for images)."""
        return {"test_bpc": test_loss / math.log(2)} if self.text else {}


def prepare_task(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Task:
    """The model (initialised from ``cfg.seed``) and the loaders of a run, its data on ``device``."""
    if is_text(cfg.dataset):
        from rbwa.data.text import load_text
        from rbwa.models.gpt import GPT

        corpus = load_text(cfg.dataset, Path(cfg.data_dir or "."))
        corpus = corpus.first(cfg.train_subset, cfg.test_subset, cfg.context)
        torch.manual_seed(cfg.seed)
        model = GPT(len(corpus.vocab), cfg.context, cfg.layers, cfg.heads, cfg.embedding, cfg.dropout)
        model = model.to(getattr(torch, cfg.param_dtype))  # initialised in float32, then held in this dtype
        check_memory(cfg, corpus.train, corpus.val, model, device)
        train = TokenLoader(corpus.train, cfg.context, cfg.batch_size, device, shuffle=True, seed=cfg.seed,
                            rank=rank, world=world)
        bn = TokenLoader(corpus.train, cfg.context, cfg.eval_batch_size, device)
        test = TokenLoader(corpus.val, cfg.context, cfg.eval_batch_size, device)
        return Task(model, train, bn, test, train.windows * cfg.context, test.windows * cfg.context, text=True,
                    extra={"vocab": len(corpus.vocab)})
    train_split, test_split = prepare_data(cfg)
    mean, std = channel_stats(train_split.images)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(train_split.classes), cfg.width)
    check_memory(cfg, train_split, test_split, model, device)
    # one copy of the training split on the device, shared by the training and the BatchNorm loaders
    images, labels = train_split.images.to(device), train_split.labels.to(device)
    common = {"mean": mean, "std": std, "device": device, "channels_last": cfg.channels_last}
    train = BatchLoader(images, labels, cfg.batch_size, shuffle=True, augment=cfg.augment == "standard",
                        seed=cfg.seed, rank=rank, world=world, **common)
    bn = BatchLoader(images, labels, cfg.eval_batch_size, **common)
    test = BatchLoader(test_split.images, test_split.labels, cfg.eval_batch_size, **common)
    return Task(model, train, bn, test, len(train_split), len(test_split))


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: bf16 ones (autocast, bf16 weights) in float32; float64 ones (an exact reference) kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader | TokenLoader, amp: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` over ``loader`` (per image, or per predicted token),
    accumulated on the device."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    count = 0
    for x, y in loader:
        with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out, y = flat(out, y)
        loss_sum += nn.functional.cross_entropy(at_least_float32(out), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return loss_sum.item() / count, 100.0 * correct.item() / count


def check_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds a run to continue; refuses a foreign one. Raises UserError."""
    saved = out / CONFIG
    if not saved.exists():
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a directory")
        return False
    if not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    for folder in (out, out / snapshots.FOLDER):  # a write killed half-way; the file it was replacing is intact
        remove_stale_temporaries(folder)
    try:
        old = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{saved} is unreadable ({e}); move the directory away and start again") from e
    differing = differing_keys(old, identify(cfg))
    if differing == ["dataset"] and str(old.get("dataset")).startswith("folder:") and "(" not in old["dataset"]:
        raise UserError(f"{out} names its data by path ({old['dataset']}), as runs before rbwa 0.2 did; "
                        f"run `rbwa migrate {out.parent.parent}` once to rename its runs")
    if differing:
        raise UserError(f"{out} was run with a different config ({', '.join(differing)}); use another --out")
    return True


def load_checkpoint(path: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True`` (tensors and plain types only: nothing to execute).

    Refuses one written for another config (``config``: the run's ``identify(cfg)``) in one line.
    """
    from torch.torch_version import TorchVersion  # a str: written by rbwa 0.1 into every checkpoint's versions

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to restart the run") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "rbwa-checkpoint-1":
        raise UserError(f"{path} is not an rbwa checkpoint; delete it to restart the run")
    saved = ckpt.get("config")  # absent from checkpoints of rbwa 0.1, whose config.json was checked already
    if config is not None and saved is not None:
        differing = differing_keys(saved, config)
        if differing:
            raise UserError(f"checkpoint {path} was written for another config ({', '.join(differing)}); "
                            "delete it to restart the run, or resume with the config it was written for")
    return ckpt


def version_warning(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A warning when a run resumes under another rbwa version or git revision, or on another CPU kind or thread
    count where the checkpoint recorded them (its numbers may change)."""
    changed = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in ("rbwa", "git", "cpu", "torch_threads")
               if saved.get(k) != now.get(k) and (k in ("rbwa", "git") or k in saved)]
    return f"warning: resuming under another {', '.join(changed)}; the rest of this run may not match an " \
        "uninterrupted one" if changed else None


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(cfg.device)
    if world == 1:
        return 0, 1, device
    if cfg.batch_size % world:
        raise UserError(f"batch size {cfg.batch_size} (the global batch) is not divisible by {world} processes")
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def stop_distributed() -> bool:
    """Destroy the process group if there is one; whether there was."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


def end_distributed(code: int) -> None:
    """Destroy the process group and, if there was one, end this process at once with ``code``.

    After destroy_process_group, a 2-process gloo script with DDP aborts at interpreter exit in about 1 run
    in 10 on torch 2.13 ("terminate called without an active exception": gloo's threads race the
    interpreter's teardown), so torchrun reports a finished run as failed. Everything is written by then, so
    skipping that teardown loses nothing.
    """
    if not stop_distributed():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def check_memory(cfg: TrainConfig, train: Split | torch.Tensor, test: Split | torch.Tensor, model: nn.Module,
                 device: torch.device) -> None:
    """Refuse a run whose data, weights, optimizer state and averages would not fit in free memory. Called before
    anything is moved to ``device``: the splits count only where they are still to be copied there (they are in
    this process's memory already, which the free memory of the CPU has accounted for)."""
    tensors = [t for split in (train, test) for t in ((split.images, split.labels) if isinstance(split, Split)
                                                       else (split,))]
    data = 0 if device.type == "cpu" else sum(t.numel() * t.element_size() for t in tensors)
    need = estimate_bytes(data, sum(p.numel() for p in model.parameters()),
                          sum(b.numel() for b in model.buffers()), cfg.method, cfg.momentum > 0, cfg.implementation)
    free = available_bytes(device)
    if free is not None and need > free:
        raise UserError(f"this run needs about {human(need)} on {device}{f' (dataset {human(data)})' if data else ''}"
                        f" but only {human(free)} is free; use --train-subset, a smaller --width, or another device")


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


def train(cfg: TrainConfig, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one run; returns its summary. Raises UserError for bad input, Diverged on NaN/Inf loss."""
    saved_config = Path(cfg.out) / CONFIG
    if resume and cfg.start_epoch is None and saved_config.is_file():  # not given: the start the run was made with
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cfg = dataclasses.replace(cfg, start_epoch=int(json.loads(saved_config.read_text())["start_epoch"]))
    cfg = resolve(cfg)
    validate(cfg)
    rank, world, device = init_distributed(cfg)
    main = rank == 0  # only the first process writes
    out = Path(cfg.out)
    resuming = check_run_dir(cfg, out, resume)
    if resuming and (out / SUMMARY).exists():
        summary = json.loads((out / SUMMARY).read_text())
        if summary.get("status") == "diverged":
            raise Diverged(f"{out} diverged in epoch {summary.get('epoch')} and cannot be resumed; start a new run "
                           "in another --out (with a lower --lr)")
        return summary
    identity = identify(cfg) if resuming else None  # computed (and cached) only once the data loads
    ckpt = load_checkpoint(out / CHECKPOINT, identity) if resuming and (out / CHECKPOINT).exists() else None

    task = prepare_task(cfg, device, rank, world)
    identity = identity or identify(cfg)
    model, train_loader, bn_loader, test_loader = task.model, task.train, task.bn, task.test
    steps = len(train_loader)
    if cfg.snapshots_per_epoch is not None and cfg.snapshots_per_epoch > steps:
        raise UserError(f"snapshots per epoch must be at most the {steps} steps of an epoch, got "
                        f"{cfg.snapshots_per_epoch}")

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
    amp = cfg.amp == "bf16"

    barrier(world)  # every process has checked the run directory before the first one writes to it
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG, identity)
        except OSError as e:
            raise UserError(f"cannot write to --out {out} ({e.strerror}); choose a writable directory") from e

    metrics: list[dict[str, Any]] = []
    first_epoch = 1
    if ckpt is not None:
        if sharded:  # saved whole, at any process count: each process keeps its own shards of it
            ckpt["model"] = fsdp.placed_model_state(ckpt["model"], model)
            ckpt["setup"]["optimizer"] = fsdp.placed_optimizer_state(ckpt["setup"]["optimizer"], setup.optimizer)
        model.load_state_dict(ckpt["model"])
        setup.load_state_dict(ckpt["setup"])
        train_loader.generator.set_state(ckpt["loader_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        metrics = ckpt["metrics"]
        first_epoch = ckpt["epoch"] + 1
        if main:  # a kill between the checkpoint's write and the metrics' leaves them one epoch apart
            write_metrics(out, metrics)
    if main:  # snapshots taken after the checkpoint are taken again, on the trajectory it continues
        snapshots.drop_after(out, (first_epoch - 1) * steps)
    provenance = versions()
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    warning = version_warning(ckpt.get("versions", {}), provenance) if ckpt is not None else None
    if cfg.fsdp and world == 1:
        warning = "\n".join(filter(None, [warning, "warning: --fsdp with one process (not started by torchrun): "
                                           "nothing to shard, the model trains whole; run under `torchrun "
                                           "--nproc-per-node N` to shard it"]))
    if warning and main:
        say(warning)
        _log_line(out, warning)

    def finish_epoch(record: dict[str, Any], epoch: int) -> None:
        metrics.append(record)
        if not (main or sharded):
            return
        # under FSDP2 every process gathers its shards: the checkpoint is whole, the file a 1-process run writes
        model_state, setup_state = fsdp.whole(model.state_dict()), fsdp.whole(setup.state_dict())
        if not main:
            return
        try:
            atomic_torch_save({"format": "rbwa-checkpoint-1", "epoch": epoch, "model": model_state,
                               "setup": setup_state, "loader_rng": train_loader.generator.get_state(),
                               "torch_rng": torch.get_rng_state(), "metrics": metrics, "versions": provenance,
                               "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                               "config": identity},
                              out / CHECKPOINT)
            write_metrics(out, metrics)
        except OSError as e:
            raise UserError(f"cannot write the epoch {epoch} checkpoint in {out} ({e.strerror}); the previous "
                            "checkpoint is intact: free some space and rerun with --resume") from e
        train_part = "" if record["train_loss"] is None else (
            f"train loss {record['train_loss']:.4f} train acc {record['train_acc']:.2f}%, ")
        measured = (f"validation loss {record['test_loss']:.4f} nats ({record['test_bpc']:.3f} bits per character), "
                    f"next-character accuracy {record['test_acc']:.2f}%" if task.text else
                    f"test loss {record['test_loss']:.4f} test acc {record['test_acc']:.2f}%")
        line = f"{method_label(cfg)} epoch {epoch}/{cfg.epochs}: {train_part}{measured} ({record['seconds']:.1f} s)"
        _log_line(out, line)
        say(line)

    snapshot_at = set(snapshots.snapshot_steps(steps, cfg.epochs, cfg.snapshot_every, cfg.snapshots_per_epoch))

    def take_snapshot(taken: int) -> None:
        if (main or sharded) and taken in snapshot_at:  # under FSDP2 every process gathers, the first one writes
            snapshots.write(out, taken, steps, model, cfg.snapshot_dtype, save=main)

    if not metrics:  # epoch 0: the initial weights, before any training
        t0 = time.perf_counter()
        with setup.evaluated(model, bn_loader) as net:
            test_loss, test_acc = evaluate(net, test_loader, amp)
        finish_epoch({"epoch": 0, "train_loss": None, "train_acc": None, "test_loss": test_loss,
                      "test_acc": test_acc, "lr": cfg.lr, "seconds": time.perf_counter() - t0,
                      **task.bits(test_loss)}, 0)

    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        shown = Progress(steps, f"{method_label(cfg)} epoch {epoch}/{cfg.epochs}", progress if main else False)
        totals, lr = train_epoch(model, forward, setup, train_loader, (epoch - 1) * steps, amp,
                                 train_loader.loss_weights() if world > 1 else None, take_snapshot, shown)
        shown.close()
        if world > 1:
            torch.distributed.all_reduce(totals)
        train_loss, train_acc = totals[0].item() / totals[2].item(), 100.0 * totals[1].item() / totals[2].item()
        if not math.isfinite(train_loss):
            if main:
                atomic_write_json(out / SUMMARY, {"status": "diverged", "epoch": epoch, "versions": provenance})
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}; the last good checkpoint is kept "
                           f"in {out / CHECKPOINT}; start a new run in another --out with a lower --lr")
        with setup.evaluated(model, bn_loader) as net:
            test_loss, test_acc = evaluate(net, test_loader, amp)
        finish_epoch({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                      "test_loss": test_loss, "test_acc": test_acc, "lr": float(lr),
                      "seconds": time.perf_counter() - t0, **task.bits(test_loss)}, epoch)

    trained = [m for m in metrics if m["epoch"] > 0]
    best = max(metrics, key=lambda m: m["test_acc"])
    summary = {
        "status": "finished", "method": cfg.method, "epochs": cfg.epochs,
        "final_test_acc": metrics[-1]["test_acc"], "final_test_loss": metrics[-1]["test_loss"],
        "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
        "final_train_loss": metrics[-1]["train_loss"], "final_train_acc": metrics[-1]["train_acc"],
        "wall_seconds": sum(m["seconds"] for m in metrics), "steps_per_epoch": steps,
        "train_size": task.train_size, "test_size": task.test_size, **task.extra,
        "mean_epoch_seconds": sum(m["seconds"] for m in trained) / max(1, len(trained)),
        "versions": provenance, "device": str(device), "processes": world,
    }
    if main:
        atomic_write_json(out / SUMMARY, summary)
    return summary

