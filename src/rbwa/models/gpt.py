"""A decoder-only transformer (GPT-2's shape, nanoGPT's size): pre-LayerNorm blocks, causal self-attention through
``scaled_dot_product_attention``, learned positions, and an output layer tied to the token embedding.

The root module owns the embeddings, the final LayerNorm and the tied head, as in GPT-2: sharded with
``fully_shard(each block); fully_shard(model)``, the root's parameters are the ones FSDP2 keeps unsharded after a
forward (the case ``RBWA.averaged`` reshards for).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def parameter_count(vocab: int, context: int, layers: int, width: int) -> int:
    """Parameters of :class:`GPT` by formula: token and position embeddings, per block two LayerNorms (2 x 2w),
    attention (w x 3w + 3w, then w x w + w) and the MLP (w x 4w + 4w, then 4w x w + w), i.e. 12 w^2 + 13 w, and the
    final LayerNorm (2w); the output layer is the token embedding. Pure."""
    return vocab * width + context * width + layers * (12 * width * width + 13 * width) + 2 * width


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the embedding width {width} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in self.qkv(x).split(w, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """Tokens (batch, time) -> next-token logits (batch, time, vocab)."""

    def __init__(self, vocab: int, context: int, layers: int = 4, heads: int = 4, width: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight  # tied, as GPT-2's lm_head
        for name, p in self.named_parameters():  # GPT-2's initialisation, residual projections scaled by depth
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"a sequence of {t} tokens is longer than the context of {self.context}")
        x = self.drop(self.tokens(idx) + self.positions(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, tokens: int, generator: torch.Generator | None = None,
                 temperature: float = 1.0, after: Callable[[], None] | None = None) -> torch.Tensor:
        """``idx`` followed by ``tokens`` sampled tokens, each drawn from the softmax of the last logits (over the
        last ``context`` tokens) with ``generator``: seeded, it is deterministic. ``after()`` follows each token."""
        for _ in range(tokens):
            logits = self(idx[:, -self.context:])[:, -1, :].float() / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            if after is not None:
                after()
        return idx
