"""What a run trains on and is measured with: image classification or character language modelling.

A task supplies the model (initialised from the run's seed), the loaders (training, BatchNorm re-estimation, test)
with its data on the device, and the sizes the summary records; :func:`evaluate` measures a model on a loader the
same way for both (mean cross-entropy and accuracy, per image or per predicted token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbwa.data import Split, is_text, load_dataset, stratified_indices
from rbwa.data.loader import BatchLoader, TokenLoader, channel_stats
from rbwa.errors import UserError
from rbwa.models import build_model
from rbwa.training.config import TrainConfig
from rbwa.training.resources import available_bytes, estimate_bytes, human


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
    return (text_task if is_text(cfg.dataset) else image_task)(cfg, device, rank, world)


def text_task(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Task:
    """A GPT on the run's text: windows of ``cfg.context`` characters, the validation split as the test."""
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


def image_task(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Task:
    """An image model on the run's images, normalised by the training split's channel statistics."""
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
