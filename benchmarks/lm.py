"""The language model's cost, side by side in one process: tokens per second of rbwa's training step against a
minimal hand-written loop on the same model and batches, and the fold's cost on the GPT.

    python benchmarks/lm.py [--data-dir ../shared/data] [--steps 20] [--rounds 5] [--batch B] [--context T]

The model is the `cpu-lm` preset's GPT (4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW); without the
Tiny Shakespeare file (DATA_DIR/tinyshakespeare/input.txt) random tokens of its 65-character vocabulary stand in.
rbwa's step is `rbwa.training.loop.train_epoch` with the `rbwa.training.methods.build` setup of `--method sgd
--optimizer adamw`
(the LR scheduler, the loss accounting on the device); the minimal loop is forward, cross-entropy, backward and
AdamW's step. Printed: each one's median seconds for `--steps` steps, tokens per second, and the ratio.
The fold costs the same per step whatever the batch, while the step's other work grows with batch x context:
`--batch 1 --context 16` shows the fold where it is largest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402

from rbwa import RBWA  # noqa: E402
from rbwa.data.loader import TokenLoader  # noqa: E402
from rbwa.models.gpt import GPT  # noqa: E402
from rbwa.training.config import PRESETS, make_config  # noqa: E402
from rbwa.training.loop import train_epoch  # noqa: E402
from rbwa.training.methods import base_optimizer, build  # noqa: E402


def tokens(data_dir: str) -> tuple[torch.Tensor, int]:
    path = Path(data_dir) / "tinyshakespeare" / "input.txt"
    if path.exists():
        from rbwa.data.text import split_corpus

        corpus = split_corpus(path.read_text())
        return corpus.train, len(corpus.vocab)
    return torch.randint(0, 65, (200_000,), generator=torch.Generator().manual_seed(0)), 65


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="windows a step (default: the preset's, 12)")
    parser.add_argument("--context", type=int, default=None, help="tokens a window (default: the preset's, 64)")
    ns = parser.parse_args()
    sizes = {k: v for k, v in (("batch_size", ns.batch), ("context", ns.context)) if v is not None}
    cfg = make_config(dataset="shakespeare", model="gpt", optimizer="adamw", method="sgd",
                      **{**PRESETS["cpu-lm"], **sizes})
    train, vocab = tokens(ns.data_dir)
    loader = TokenLoader(train, cfg.context, cfg.batch_size, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(ns.steps), loader, strict=False)]
    per_step = cfg.batch_size * cfg.context

    def model() -> GPT:
        torch.manual_seed(0)
        return GPT(vocab, cfg.context, cfg.layers, cfg.heads, cfg.embedding)

    ours, plain, wrapped = model(), model(), model()
    setup = build(cfg, ours, len(loader))
    plain_opt = base_optimizer(cfg, plain)
    rbwa_opt = RBWA(base_optimizer(cfg, wrapped), start_step=0)

    def rbwa_trainer() -> None:
        train_epoch(ours, ours, setup, batches, 0, amp=False)

    def minimal(net: GPT, opt: torch.optim.Optimizer) -> None:
        net.train()
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, vocab), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    times = interleaved({"rbwa train_epoch": rbwa_trainer, "minimal loop": lambda: minimal(plain, plain_opt),
                         "minimal loop, RBWA folding every step": lambda: minimal(wrapped, rbwa_opt)},
                        rounds=ns.rounds, warmup=1)
    print(f"# the language model's training step, {machine()}")
    print(f"GPT {cfg.layers}x{cfg.heads}x{cfg.embedding}, context {cfg.context}, batch {cfg.batch_size}, "
          f"{sum(p.numel() for p in ours.parameters()):,} parameters, {ns.steps} steps x {ns.rounds} rounds")
    for name, seconds in times.items():
        print(f"{name}: {seconds:.3f} s, {ns.steps * per_step / seconds:,.0f} tokens/s")
    print(f"rbwa train_epoch / minimal loop: {times['rbwa train_epoch'] / times['minimal loop']:.3f}")
    print(f"RBWA's fold every step / minimal loop: "
          f"{times['minimal loop, RBWA folding every step'] / times['minimal loop']:.3f}")


if __name__ == "__main__":
    main()
