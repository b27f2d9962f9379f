"""DTensor helpers: FSDP2's parameters and their averages, as each process holds them or whole."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def local(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor as this process holds it: a DTensor's local shard (FSDP2's parameters, their averages), which
    aliases the DTensor's storage, so in-place ops on it need no communication; other tensors as they are. Write
    to the shards under ``torch.no_grad()`` (autograd forbids writing to these views otherwise)."""
    return [t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t for t in tensors]


def reshard(module: torch.nn.Module) -> None:
    """Reshard every FSDP2 module in ``module`` (a no-op elsewhere): FSDP2 keeps the root's parameters unsharded
    after a forward, and a module holding unsharded copies computes with them, not with its shards, so anything
    that writes the shards (a swap to the average and back) must reshard first."""
    fsdp_module = _fsdp_module()
    if fsdp_module is None:
        return
    for m in module.modules():
        if isinstance(m, fsdp_module):
            m.reshard()


def _fsdp_module() -> type | None:
    """FSDP2's module class (``torch.distributed.fsdp`` from torch 2.6, ``_composable.fsdp`` before), or None."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import FSDPModule  # type: ignore[no-redef]
        except ImportError:
            return None
    return FSDPModule


def whole(state: Any) -> Any:
    """``state`` (a tensor, or nested dicts, lists, tuples) with every DTensor in it gathered whole, anything else as
    it is: a collective, which every process calls on the same structure (as frameworks call a callback's
    state_dict)."""
    if hasattr(state, "full_tensor"):
        return state.full_tensor()
    if isinstance(state, dict):
        return {k: whole(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(whole(v) for v in state)
    return state


def place(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor``, whole (every process holds the same copy), cut into the FSDP2 placement of ``like``, each process
    keeping its own shard (no communication), in its own dtype; as it is where ``like`` is no DTensor or ``tensor``
    already is one."""
    if not hasattr(like, "placements") or hasattr(tensor, "placements"):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    try:
        return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    except TypeError:  # torch < 2.6: scattered from the first process, which holds the same copy
        return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements)


def placed_like(averages: dict[str, Tensor], module: torch.nn.Module) -> None:
    """Averages restored whole from a checkpoint (``whole``), cut back into the placement of their FSDP2
    parameters (``place``); others stay."""
    for name, p in module.named_parameters():
        if name in averages:
            averages[name] = place(averages[name], p)


