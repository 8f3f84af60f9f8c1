"""A small class-conditional diffusion transformer (DiT, Peebles & Xie 2023) for 16x16
digits: 4x4 patches (16 tokens) with learned positions, a stack of identical transformer
blocks conditioned by adaLN-Zero on the (time, class) embedding, and a modulated linear
head. ``model.blocks`` is the ``nn.ModuleList`` of those blocks: block-output caching
(FORA, TeaCache, FirstBlockCache) hooks onto them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConditionEmbedding


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each scaled, shifted and gated by the embedding
    (adaLN-Zero: the gates start at zero, so each block starts as the identity)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU("tanh"), nn.Linear(hidden, dim))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaln[1].weight)
        nn.init.zeros_(self.adaln[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c).chunk(6, dim=1)
        b, n, d = x.shape
        qkv = self.qkv(_modulate(self.norm1(x), shift1, scale1))
        q, k, v = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + gate1[:, None] * self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """``forward(x, t, y)``: x (batch, 1, 16, 16), native time t (batch,), labels y with
    ``num_classes`` as the null class (or None). Returns a tensor shaped like x."""

    def __init__(
        self,
        dim: int = 96,
        depth: int = 6,
        heads: int = 4,
        patch: int = 4,
        image_size: int = 16,
        num_classes: int = 10,
        time_scale: float = 1.0,
    ):
        super().__init__()
        self.patch = patch
        self.grid = image_size // patch
        self.embed = ConditionEmbedding(dim, num_classes, time_scale)
        self.patchify = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.head_adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.head = nn.Linear(dim, patch * patch)
        for layer in (self.head_adaln[1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.embed(t, y)
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.head_adaln(c).chunk(2, dim=1)
        h = self.head(_modulate(self.norm(h), shift, scale))  # (b, tokens, patch*patch)
        b, g, p = h.shape[0], self.grid, self.patch
        return h.reshape(b, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, g * p, g * p)
