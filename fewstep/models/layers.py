"""Pieces both generative networks share: the embedding of (time, class) they condition on."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of the (scaled) time t (batch,) -> (batch, dim), as in DDPM."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ConditionEmbedding(nn.Module):
    """Embeds the native time and the class label (``num_classes`` is the null class of
    classifier-free guidance) into one vector per sample.

    ``time_scale`` maps the native time onto the 0..1000 range the sinusoids are laid out
    for: 1 for discrete VP timesteps, 1000 for flow times in [0, 1].
    """

    def __init__(self, dim: int, num_classes: int, time_scale: float, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.null_class = num_classes
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            y = torch.full((t.shape[0],), self.null_class, dtype=torch.long, device=t.device)
        temb = self.time_mlp(timestep_features(t * self.time_scale, self.freq_dim))
        return temb + self.class_embedding(y)
