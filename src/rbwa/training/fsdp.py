"""FSDP2 in the trainer (``rbwa train --fsdp`` under torchrun): shard rbwa's GPT, and move a run's state between
shards and whole tensors, so that its checkpoints and snapshots are the files a 1-process run writes, and any
process count resumes them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rbwa.averaging.dtensor import place, whole

__all__ = ["placed_model_state", "placed_optimizer_state", "shard", "whole"]


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` each transformer block, then the root, which owns the embeddings, the final norm and the
    head tied to the token embedding."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)


def placed_model_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A model state dict saved whole, each tensor cut into the placement of the sharded model's own."""
    own = model.state_dict()
    return {k: place(v, own[k]) if k in own else v for k, v in state.items()}


def placed_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state dict saved whole (parameters by their index in the groups, as ``state_dict`` keys them),
    each per-parameter tensor of its parameter's shape (moments, an average) cut into that parameter's placement;
    scalars (a step count) stay whole."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    placed = {i: {k: place(v, params[i]) if torch.is_tensor(v) and v.shape == params[i].shape else v
                  for k, v in per_param.items()}
              for i, per_param in state["state"].items()}
    return {**state, "state": placed}
