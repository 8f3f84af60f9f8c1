"""A small class-conditional UNet for 16x16 digits.

The 16x16 image is folded into 4 channels at 8x8 (pixel unshuffle: the digits are 8x8
images upsampled, so no detail is lost), then a two-level UNet (8x8 and 4x4) with
residual blocks modulated by the (time, class) embedding (with DDPM's dropout before each
block's second convolution), self-attention at 4x4, and skip connections; the output is
unfolded back to 16x16. About 0.44M parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConditionEmbedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a scale and shift from the embedding in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb(nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(nn.functional.silu(h)))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = nn.functional.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``forward(x, t, y)``: x (batch, 1, 16, 16), native time t (batch,), labels y
    (batch,) with ``num_classes`` as the null class (or None: all null). Returns a tensor
    shaped like x (the prediction the model was trained for)."""

    def __init__(
        self,
        channels: tuple[int, int] = (32, 64),
        emb_dim: int = 128,
        num_classes: int = 10,
        time_scale: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        c0, c1 = channels
        self.embed = ConditionEmbedding(emb_dim, num_classes, time_scale)
        self.fold = nn.PixelUnshuffle(2)
        self.stem = nn.Conv2d(4, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, emb_dim, dropout)
        self.downsample = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1 = ResBlock(c0, c1, emb_dim, dropout)
        self.mid = ResBlock(c1, c1, emb_dim, dropout)
        self.attn = Attention(c1)
        self.up1 = ResBlock(2 * c1, c1, emb_dim, dropout)
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c1, c0, 3, padding=1))
        self.up0 = ResBlock(2 * c0, c0, emb_dim, dropout)
        self.out_norm = _norm(c0)
        self.out = nn.Conv2d(c0, 4, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.unfold = nn.PixelShuffle(2)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.embed(t, y)
        h0 = self.down0(self.stem(self.fold(x)), emb)
        h1 = self.down1(self.downsample(h0), emb)
        h = self.attn(self.mid(h1, emb))
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        h = self.up0(torch.cat([self.upsample(h), h0], dim=1), emb)
        return self.unfold(self.out(nn.functional.silu(self.out_norm(h))))
