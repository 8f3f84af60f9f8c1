"""The standard exact-reference problems: a Gaussian mixture under a real schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..digest import content_digest
from ..errors import ArgumentError
from ..model import Model, PredictionType
from ..noise import randn
from ..schedules import EDMSchedule, FlowSchedule, NoiseSchedule, VPSchedule
from .gmm import GaussianMixture
from .ode import solve_pf_ode


@dataclass
class Problem:
    """A mixture, a schedule and the parameterization its model predicts."""

    name: str
    gmm: GaussianMixture
    schedule: NoiseSchedule
    prediction: PredictionType
    _cache: dict = field(default_factory=dict, repr=False)

    def model(self, **kwargs) -> Model:
        return self.gmm.model(self.schedule, self.prediction, **kwargs)

    def noise(self, n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
        """n standard-normal noises (n, d) with per-sample seeds."""
        return randn((n, self.gmm.dim), seed, dtype=dtype, draw_dtype=torch.float64)

    def reference(self, noise: Tensor, **kwargs) -> Tensor:
        """The exact end point from ``noise`` (cached per noise tensor and options)."""
        key = (content_digest(noise), tuple(sorted(kwargs.items())))
        if key not in self._cache:
            self._cache[key] = solve_pf_ode(self.gmm, self.schedule, noise, **kwargs)
        return self._cache[key]


SCHEDULES = {
    "gmm-vp": (lambda: VPSchedule.scaled_linear(), "epsilon"),
    "gmm-flow": (lambda: FlowSchedule(), "flow"),
    "gmm-edm": (lambda: EDMSchedule(0.002, 80.0), "sample"),
}


def problem(name: str, dim: int = 64, components: int = 8, seed: int = 0) -> Problem:
    """A standard problem: 'gmm-vp' (Stable Diffusion's scaled_linear VP, epsilon
    prediction), 'gmm-flow' (rectified flow, velocity) or 'gmm-edm' (EDM, denoiser)."""
    if name not in SCHEDULES:
        raise ArgumentError("problem", f"unknown {name!r}", f"one of {sorted(SCHEDULES)}")
    make_schedule, prediction = SCHEDULES[name]
    gmm = GaussianMixture.random(dim, components, seed)
    return Problem(name, gmm, make_schedule(), prediction)
