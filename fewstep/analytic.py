"""The analytic first step: a Gaussian fitted to the data stands in for the first model call.

At the start of sampling the state is almost pure noise, and E[x0 | x_t] of the data is close
to that of a Gaussian with the data's mean and variance (Zhou et al., "Fast ODE-based
sampling for diffusion models in around 5 steps", AFS). With per-element mean m and variance
v, x_t = alpha x0 + sigma eps gives, element by element,

    eps = sigma (x_t - alpha m) / (alpha^2 v + sigma^2),    D = m + alpha v eps / sigma,

so the first evaluation costs no model call and the budget goes to later steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .model import Point, Prediction
from .program import Estimate, Evaluate, Program


@dataclass(frozen=True, eq=False)
class GaussianData:
    """Per-element mean and variance of the data (the shape of one sample)."""

    mean: Tensor
    var: Tensor

    @classmethod
    def fit(cls, samples: Tensor) -> GaussianData:
        """The mean and variance of ``samples`` (batch, ...), e.g. a teacher's end points."""
        if samples.ndim < 2 or samples.shape[0] < 2:
            raise ArgumentError("samples", "fitting a Gaussian needs a batch of 2 or more samples")
        x = samples.detach().to(torch.float64).cpu()
        return cls(x.mean(0), x.var(0))

    def predict(self, x: Tensor, point: Point) -> Prediction:
        """(D, eps) of the Gaussian at ``point`` for states ``x`` (batch, ...)."""
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ArgumentError(
                "config",
                f"its analytic first step was fitted to samples of shape "
                f"{tuple(self.mean.shape)}, not {tuple(x.shape[1:])}",
                "tune it for this model's sample shape",
            )
        a, s = point.alpha, point.sigma
        mean = self.mean.to(x)
        var = self.var.to(x)
        noise = s * (x - a * mean) / (a * a * var + s * s)
        data = mean + (a / s) * var * noise
        return Prediction(data, noise)

    def record(self) -> dict[str, Any]:
        """The JSON-ready form (a field of a sampler config)."""
        return {
            "shape": list(self.mean.shape),
            "mean": self.mean.flatten().tolist(),
            "var": self.var.flatten().tolist(),
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> GaussianData:
        shape = tuple(int(n) for n in data["shape"])
        mean = torch.tensor(data["mean"], dtype=torch.float64)
        var = torch.tensor(data["var"], dtype=torch.float64)
        if mean.numel() != math.prod(shape) or var.shape != mean.shape or (var < 0).any():
            raise ArgumentError(
                "config", "its Gaussian needs a mean and a non-negative variance of its shape"
            )
        return cls(mean.view(shape), var.view(shape))


def analytic_start(program: Program, gaussian: GaussianData) -> Program:
    """The program with its first model call replaced by the Gaussian's prediction: a
    program compiled for n + 1 evaluations then makes n model calls."""
    instructions = list(program.instructions)
    first = next(i for i, ins in enumerate(instructions) if isinstance(ins, Evaluate))
    ins = instructions[first]
    instructions[first] = Estimate(ins.state, ins.point, gaussian.predict)
    return replace(program, instructions=tuple(instructions))
