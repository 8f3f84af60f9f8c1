"""Corrections applied to model outputs: classifier-free guidance and dynamic thresholding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ArgumentError


def class_inputs(model, labels: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """The conditional and unconditional inputs of class ``labels``, under the model's
    ``class_input`` name (``y`` by default): the unconditional branch of classifier-free
    guidance gets the model's ``null_class`` (None where it has none)."""
    key = getattr(model, "class_input", "y")
    null = getattr(model, "null_class", None)
    return {key: labels}, (None if null is None else {key: torch.full_like(labels, int(null))})


def _per_sample_std(x: Tensor) -> Tensor:
    return x.std(dim=tuple(range(1, x.ndim)), keepdim=True)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: out = u + scale (c - u), with optional guidance rescale
    (Lin et al., 2024), which pulls the guided output's per-sample std back towards the
    conditional one to undo over-exposure at large scales."""

    scale: float = 1.0
    rescale: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.rescale <= 1.0:
            raise ArgumentError("guidance_rescale", f"must lie in [0, 1], got {self.rescale}")

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        out = uncond + self.scale * (cond - uncond)
        if self.rescale > 0:
            rescaled = out * (_per_sample_std(cond) / _per_sample_std(out))
            out = self.rescale * rescaled + (1.0 - self.rescale) * out
        return out


@dataclass(frozen=True)
class DynamicThresholding:
    """Imagen's dynamic thresholding of the data prediction: clip each sample to its
    ``ratio`` quantile of |x0| (at least 1, at most ``max_value``) and rescale by it."""

    ratio: float = 0.995
    max_value: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise ArgumentError("thresholding.ratio", f"must lie in (0, 1], got {self.ratio}")
        if self.max_value < 1.0:
            raise ArgumentError("thresholding.max_value", "must be at least 1")

    def __call__(self, data: Tensor) -> Tensor:
        flat = data.reshape(data.shape[0], -1)
        work = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
        s = torch.quantile(work.abs(), self.ratio, dim=1).clamp(1.0, self.max_value)
        s = s.to(data.dtype).view(-1, *([1] * (data.ndim - 1)))
        return torch.maximum(torch.minimum(data, s), -s) / s
