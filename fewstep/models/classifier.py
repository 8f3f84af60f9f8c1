"""The digits classifier whose penultimate features define the digits FID.

Four 3x3 convolutions (16x16 -> 8x8 -> 4x4) and a 64-wide penultimate layer; trained on
the train split with random shifts, it is the "Inception network" of the digits metrics.
"""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """``forward(x)`` gives logits (batch, 10) of images (batch, 1, 16, 16) in [-1, 1];
    ``features(x)`` the penultimate activations (batch, ``feature_dim``)."""

    def __init__(self, channels: tuple[int, int] = (32, 64), feature_dim: int = 64):
        super().__init__()
        c0, c1 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c0, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c0, c0, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c0, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c1 * 16, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the feature space of the digits FID."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.dropout(self.features(x)))
