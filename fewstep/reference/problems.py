"""The standard exact-reference problems: a Gaussian mixture under a real schedule."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from ..digest import content_digest
from ..errors import ArgumentError
from ..io import atomic_write_bytes
from ..model import Model, PredictionType
from ..noise import randn
from ..schedules import EDMSchedule, FlowSchedule, NoiseSchedule, VPSchedule
from .gmm import GaussianMixture
from .ode import solve_pf_ode


@dataclass
class Problem:
    """A mixture, a schedule and the parameterization its model predicts. With
    ``cache_dir``, exact references are also kept on disk there (one file per mixture,
    schedule, noises and solve options), so benchmarks re-run without re-solving them."""

    name: str
    gmm: GaussianMixture
    schedule: NoiseSchedule
    prediction: PredictionType
    cache_dir: Path | None = None
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
            self._cache[key] = self._stored(noise, kwargs)
        return self._cache[key]

    def _stored(self, noise: Tensor, kwargs: dict) -> Tensor:
        """The reference from ``cache_dir`` where it was solved before, else solved (and
        stored there)."""
        if self.cache_dir is None:
            return solve_pf_ode(self.gmm, self.schedule, noise, **kwargs)
        gmm = self.gmm
        key = repr(
            (
                [content_digest(v) for v in (gmm.means, gmm.covariances, gmm.weights)],
                self.schedule.config(),
                content_digest(noise),
                sorted(kwargs.items()),
            )
        )
        path = Path(self.cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}.safetensors"
        if path.is_file():
            return load_file(path)["reference"]
        ref = solve_pf_ode(self.gmm, self.schedule, noise, **kwargs)
        atomic_write_bytes(path, save({"reference": ref.contiguous()}))
        return ref


SCHEDULES = {
    "gmm-vp": (lambda: VPSchedule.scaled_linear(), "epsilon"),
    "gmm-flow": (lambda: FlowSchedule(), "flow"),
    "gmm-edm": (lambda: EDMSchedule(0.002, 80.0), "sample"),
}


def problem(
    name: str,
    dim: int = 64,
    components: int = 8,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Problem:
    """A standard problem: 'gmm-vp' (Stable Diffusion's scaled_linear VP, epsilon
    prediction), 'gmm-flow' (rectified flow, velocity) or 'gmm-edm' (EDM, denoiser); with
    ``cache_dir``, its exact references are kept on disk there."""
    if name not in SCHEDULES:
        raise ArgumentError("problem", f"unknown {name!r}", f"one of {sorted(SCHEDULES)}")
    make_schedule, prediction = SCHEDULES[name]
    gmm = GaussianMixture.random(dim, components, seed)
    return Problem(
        name, gmm, make_schedule(), prediction, None if cache_dir is None else Path(cache_dir)
    )
