"""Classical integrators of the probability-flow ODE in a sigma-like variable (Karras et al.).

They integrate dy/dtau = k D + eps for y = x / c and tau = sigma / c, c = alpha - k sigma
(see ``NoiseSchedule.classical_k``): the variance-exploding space of k-diffusion for VP and
EDM schedules, the straight path in t for rectified flow. A step with weights w_j over
evaluations j is x_q = (c_q / c_p) x_p + c_q sum_j w_j (k D_j + eps_j).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Point
from ..program import Term
from .base import Grid, MultistepSolver


def frame(k: float, p: Point) -> tuple[float, float]:
    """(c, tau) of point p in the classical space of slope k."""
    c = p.alpha - k * p.sigma
    return c, p.sigma / c


def classical_terms(k: float, c_next: float, weights: Sequence[tuple[int, float]]) -> list[Term]:
    """Terms c_next * w (k D + eps) for (evaluation, weight) pairs."""
    return [Term(src, data=c_next * w * k, noise=c_next * w) for src, w in weights]


class Euler(MultistepSolver):
    """Euler's method in the classical space (Karras et al., Algorithm 1 without churn).
    In exact arithmetic it coincides with DDIM; it is kept as its own rule because it is
    what k-diffusion and flow-matching schedulers call Euler."""

    name = "euler"
    order = 1

    def step(self, grid: Grid, i: int, history: Sequence[int]) -> tuple[float, list[Term]]:
        k = grid.schedule.classical_k
        c_p, tau_p = frame(k, grid[i])
        c_q, tau_q = frame(k, grid[i + 1])
        return c_q / c_p, classical_terms(k, c_q, [(history[i], tau_q - tau_p)])
