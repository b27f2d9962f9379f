"""Optimizer-step cost of recurrent averaging against the bare optimizer, side by side in one process.

    python benchmarks/averaging_overhead.py

Per width of ResNet-18: the median time of the bare SGD step, RBWA's copy path and lr_scale path,
the side-copy EMA of torch.optim.swa_utils (what ``rbwa train --method ema`` used before rbwa 0.4), the trainer's
side EMA now (``rbwa.training.methods.SideAverage``: the named core shared with the callbacks), and a timm-style
Lookahead,
each divided by the bare step;
the same overheads relative to a whole training step (forward + backward + step); and the fold alone
against the memory-bandwidth floor, one torch._foreach_copy_ over the same tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402

from rbwa import RBWA, fold_  # noqa: E402
from rbwa.models import build_model  # noqa: E402
from rbwa.training.methods import SideAverage  # noqa: E402


class TimmStyleLookahead:
    """The update of timm's optim/lookahead.py (slow weights in state, lerp toward fast, copy back)."""

    def __init__(self, base: torch.optim.Optimizer, alpha: float = 0.5, k: int = 1) -> None:
        self.base, self.alpha, self.k, self.steps = base, alpha, k, 0
        self.params = [p for g in base.param_groups for p in g["params"]]
        self.slow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.base.step()
        self.steps += 1
        if self.steps % self.k == 0:
            for fast, slow in zip(self.params, self.slow, strict=True):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)


@torch.no_grad()
def copy_floor(averages: list[torch.Tensor], params: list[torch.Tensor]) -> None:
    torch._foreach_copy_(averages, params)


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)


def bench(width: float, batch: int = 64) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    torch.nn.functional.cross_entropy(model(x), y).backward()  # gradients stay in place for every step below
    params = [p for p in model.parameters()]
    n = sum(p.numel() for p in params)
    bare = sgd(model)
    copy = RBWA(sgd(model), start_step=0)
    lr_scale = RBWA(sgd(model), start_step=0, implementation="lr_scale")
    for opt in (bare, copy, lr_scale):
        opt.step()
    copy.step()  # past the first fold: every later fold lerps
    ema_base, ema = sgd(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    lookahead = TimmStyleLookahead(sgd(model))
    averages = [p.detach().clone() for p in params]

    side_base, side = sgd(model), SideAverage(model, "ema", start_step=0, steps_per_epoch=1, ema_decay=0.999)
    side.after_step(model, 0)  # past the first fold: every later fold lerps

    def ema_step() -> None:
        ema_base.step()
        ema.update_parameters(model)

    def side_step() -> None:
        side_base.step()
        side.after_step(model, 1)

    steps = interleaved({"bare SGD step": bare.step, "RBWA copy path": copy.step, "RBWA lr_scale path": lr_scale.step,
                         "swa_utils EMA (side copy, rbwa < 0.4's --method ema)": ema_step,
                         "rbwa train's side EMA (NamedAverages)": side_step,
                         "timm-style Lookahead (k=1)": lookahead.step})
    fold = interleaved({"fold (foreach lerp + copy)": lambda: fold_(averages, params, 0.01),
                        "floor: one _foreach_copy_": lambda: copy_floor(averages, params)}, rounds=100)

    def train_step(opt):
        def run() -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return run

    whole = interleaved({"bare": train_step(bare), "copy": train_step(copy), "lr_scale": train_step(lr_scale)},
                        rounds=8, warmup=1)
    print(f"\n## ResNet-18, width {width} ({n / 1e6:.2f}M parameters, batch {batch})\n")
    print("| optimizer step | median ms | / bare SGD step |\n|---|---|---|")
    for name, t in steps.items():
        print(f"| {name} | {t * 1e3:.3f} | {t / steps['bare SGD step']:.3f}x |")
    extra = {k: steps[k] - steps["bare SGD step"] for k in ("RBWA copy path", "RBWA lr_scale path")}
    print(f"\nWhole training step (forward + backward + step), bare: {whole['bare'] * 1e3:.1f} ms. Measured ratios "
          f"(noisy at this length): copy path {whole['copy'] / whole['bare']:.3f}x, lr_scale path "
          f"{whole['lr_scale'] / whole['bare']:.3f}x. From the step medians above: copy path "
          f"{1 + extra['RBWA copy path'] / whole['bare']:.4f}x, lr_scale path "
          f"{1 + extra['RBWA lr_scale path'] / whole['bare']:.4f}x.")
    old = steps["swa_utils EMA (side copy, rbwa < 0.4's --method ema)"]
    new = steps["rbwa train's side EMA (NamedAverages)"]
    print(f"The trainer's side EMA, after / before the named core: {new / old:.3f}x the step with its fold.")
    f, floor = fold["fold (foreach lerp + copy)"], fold["floor: one _foreach_copy_"]
    print(f"Fold alone: {f * 1e3:.3f} ms = {f / floor:.2f}x the copy floor ({floor * 1e3:.3f} ms, "
          f"{2 * 4 * n / floor / 1e9:.1f} GB/s).")


if __name__ == "__main__":
    print(f"# averaging_overhead\n\nMachine: {machine()}")
    for w in (0.25, 1.0):
        bench(w)
