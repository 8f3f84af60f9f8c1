"""Exponential integrators in log-SNR time (DDIM, DPM-Solver, DPM-Solver++, DEIS, ...).

Each solver here is a coefficient rule on the core of ``fewstep.program``: the step from
point p to q is x_q = (sigma_q / sigma_p) x_p + alpha_q sum_j w_j D_j (data form) or
x_q = (alpha_q / alpha_p) x_p - sigma_q sum_j w_j eps_j (noise form).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..program import Term
from .base import Grid, MultistepSolver, ddim_step


class DDIM(MultistepSolver):
    """DDIM (Song et al., 2021): the first-order exponential integrator in data form;
    identical to DPM-Solver-1 and DPM-Solver++1."""

    name = "ddim"
    order = 1

    def step(self, grid: Grid, i: int, history: Sequence[int]) -> tuple[float, list[Term]]:
        return ddim_step(grid[i], grid[i + 1], history[i])
