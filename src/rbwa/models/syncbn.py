"""BatchNorm over the global batch of all processes, on any device.

``torch.nn.SyncBatchNorm`` accepts only GPU inputs; this one sums the per-channel statistics with a
differentiable all-reduce, so it also runs with the gloo backend on CPUs. Its collectives use a
process group of their own, so they never interleave with DistributedDataParallel's gradient
all-reduces. With one process it is exactly ``nn.BatchNorm2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

_GROUP: Any = None


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out, group=_GROUP)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out, group=_GROUP)
        return out


def update_running(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: Tensor) -> None:
    """nn.BatchNorm2d's running-statistics update: ``momentum=None`` is a cumulative average (as
    ``torch.optim.swa_utils.update_bn`` uses it), otherwise an EMA; the variance is stored unbiased."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_((var * count / (count - 1)).to(bn.running_var.dtype), factor)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # statistics in float32 whatever the input (bf16 under autocast), in two passes (mean, then squared
        # deviations from it), as stable as the one-process kernel
        xf = x.float()
        local = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([local, xf.sum(dim=(0, 2, 3))]))
        count = stats[0].detach()
        mean = stats[1:] / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                update_running(self, mean.detach(), var.detach(), count)
        shape = (1, -1, 1, 1)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_global_bn(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` with :class:`GlobalBatchNorm2d`, keeping its state.

    Under a process group, every process must call this (it creates the statistics' own group).
    """
    global _GROUP
    if _GROUP is None and dist.is_available() and dist.is_initialized():
        _GROUP = dist.new_group()
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module
