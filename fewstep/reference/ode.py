"""The exact probability-flow ODE solution of a Gaussian mixture from given noise.

With y = x / alpha and s = log(sigma / alpha), the ODE is dy/ds = y - D(y, sigma = e^s):
smooth, and independent of the schedule except through its end points. The whole batch is
one system for scipy's DOP853 (rtol = atol = 1e-10, float64). A start at zero SNR
(rectified flow at t = 1) is first integrated in a = alpha / sigma from a = 0, where
z = x / sigma obeys dz/da = D(z, alpha = a, sigma = 1), then continued in log-sigma.
The result follows ``fewstep.sample``'s convention: the data prediction at the end time.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..errors import FewstepError
from ..schedules import NoiseSchedule
from .gmm import GaussianMixture


def _integrate(rhs, y0: np.ndarray, s0: float, s1: float, rtol: float, atol: float) -> np.ndarray:
    sol = solve_ivp(rhs, (s0, s1), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise FewstepError(f"reference ODE solve failed: {sol.message}")
    return sol.y[:, -1]


def solve_pf_ode(
    gmm: GaussianMixture,
    schedule: NoiseSchedule,
    noise: Tensor,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> Tensor:
    """Exact data prediction at ``t_end`` (default t_min) of the ODE started from ``noise``
    mapped to the state at ``t_start`` (default t_max), as ``fewstep.sample`` maps it."""
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    shape = noise.shape
    x = noise.detach().to("cpu", torch.float64).reshape(shape[0], -1)
    x = x * schedule.initial_scale(t_start)
    alpha0, sigma0 = (float(v) for v in schedule.alpha_sigma(t_start))
    s_end = math.log(float(schedule.edm_sigma(t_end)))

    def denoise(flat: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        y = torch.from_numpy(flat).reshape(x.shape)
        return gmm.denoise(y, alpha, sigma).reshape(-1).numpy()

    if alpha0 == 0.0:
        a_switch = min(1.0, math.exp(-s_end))
        z = (x / sigma0).reshape(-1).numpy()
        z = _integrate(lambda a, z: denoise(z, a, 1.0), z, 0.0, a_switch, rtol, atol)
        y, s0 = z / a_switch, -math.log(a_switch)
    else:
        y, s0 = (x / alpha0).reshape(-1).numpy(), math.log(sigma0 / alpha0)
    if s0 != s_end:
        y = _integrate(lambda s, y: y - denoise(y, 1.0, math.exp(s)), y, s0, s_end, rtol, atol)
    out = gmm.denoise(torch.from_numpy(y).reshape(x.shape), 1.0, math.exp(s_end))
    return out.reshape(shape)
