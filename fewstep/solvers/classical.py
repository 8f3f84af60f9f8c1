"""Classical integrators of the probability-flow ODE in a sigma-like variable (Karras et al.).

They integrate dy/dtau = k D + eps for y = x / c and tau = sigma / c, c = alpha - k sigma
(see ``NoiseSchedule.classical_k``): the variance-exploding space of k-diffusion for VP and
EDM schedules, the straight path in t for rectified flow. A step with weights w_j over
evaluations j is x_q = (c_q / c_p) x_p + c_q sum_j w_j (k D_j + eps_j).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError
from ..integrals import plain_weights
from ..model import Point, points
from ..program import ProgramBuilder, Term
from .base import (
    Grid,
    MultistepSolver,
    SinglestepSolver,
    Solver,
    Step,
    check_choice,
    check_order,
    ddim_step,
    two_call_plan,
)
from .exponential import ADAMS_BASHFORTH, WARMUPS
from .unipc import UniC, make_corrector


def frame(k: float, p: Point) -> tuple[float, float]:
    """(c, tau) of point p in the classical space of slope k."""
    c = p.alpha - k * p.sigma
    return c, p.sigma / c


def classical_step(k: float, p: Point, q: Point, weighted: Sequence[tuple[int, float]]) -> Step:
    """x_q = (c_q / c_p) x_p + c_q sum_j w_j (k D_j + eps_j), weights per unit of tau."""
    c_p, _ = frame(k, p)
    c_q, _ = frame(k, q)
    return c_q / c_p, [Term(src, data=c_q * w * k, noise=c_q * w) for src, w in weighted]


def _tau(grid: Grid, i: int) -> float:
    return frame(grid.schedule.classical_k, grid[i])[1]


class Classical:
    """Mixin: a classical solver is singular only where its scale alpha - k sigma vanishes
    (zero SNR in the variance-exploding space; never on the straight flow path). Its
    singlestep warm-up integrates the polynomial through the earlier stages exactly in tau."""

    def singular(self, schedule, point: Point) -> bool:
        return frame(schedule.classical_k, point)[0] == 0.0

    def warmup_stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        tau = [_tau(grid, a + m) for m in range(j)]
        weights = plain_weights([t - tau[0] for t in tau], _tau(grid, a + j) - tau[0])
        kk = grid.schedule.classical_k
        return classical_step(kk, grid[a], grid[a + j], list(zip(sources, weights, strict=False)))


class Churn:
    """EDM's stochastic churn (Karras et al., Algorithm 2), shared by Euler and Heun: before
    step i, raise the noise level sigma (= sigma/alpha) to sigma_hat = sigma (1 + gamma) with
    fresh noise, gamma = min(s_churn / n, sqrt(2) - 1) where s_tmin <= sigma <= s_tmax (n the
    grid size, k-diffusion's convention), evaluate there and step on. sigma_hat is capped at
    the schedule's largest noise level, where the model is defined."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    brownian: bool = False

    def _set_churn(self, s_churn, s_tmin, s_tmax, s_noise, brownian):
        if s_churn < 0 or s_noise < 0:
            raise ArgumentError("s_churn", "s_churn and s_noise must be non-negative")
        self.s_churn, self.s_tmin, self.s_tmax = float(s_churn), float(s_tmin), float(s_tmax)
        self.s_noise = float(s_noise)
        self.brownian = bool(brownian)
        self.stochastic = self.s_churn > 0

    def churn_options(self) -> dict[str, Any]:
        return {
            "s_churn": self.s_churn,
            "s_tmin": self.s_tmin,
            "s_tmax": self.s_tmax,
            "s_noise": self.s_noise,
            "brownian": self.brownian,
        }

    def churn(self, b: ProgramBuilder, grid: Grid, i: int) -> Point:
        """Add the churn noise to register 0 before grid point i; the point to evaluate at."""
        p = grid[i]
        ve = p.sigma / p.alpha if p.alpha else math.inf
        if self.s_churn == 0 or not self.s_tmin <= ve <= self.s_tmax or math.isinf(ve):
            return p
        gamma = min(self.s_churn / len(grid), math.sqrt(2) - 1)
        top = float(grid.schedule.edm_sigma(grid.schedule.t_max))
        hat = min(ve * (1 + gamma), top)
        if hat <= ve:
            return p
        ph = points(grid.schedule, grid.schedule.t_of_edm_sigma(hat))[0]
        draw = b.draw(hat, ve)
        std = ph.alpha * math.sqrt(hat**2 - ve**2) * self.s_noise
        b.combine(0, 0, ph.alpha / p.alpha, [], draws=[(draw, std)])
        return ph


class Euler(Churn, Classical, MultistepSolver):
    """Euler's method in the classical space (Karras et al., Algorithm 2 with optional
    churn). In exact arithmetic it coincides with DDIM; it is kept as its own rule because
    it is what k-diffusion and flow-matching schedulers call Euler."""

    name = "euler"
    order = 1

    def __init__(
        self,
        corrector: str | UniC | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        brownian: bool = False,
    ):
        self.corrector = make_corrector(corrector)
        self._set_churn(s_churn, s_tmin, s_tmax, s_noise, brownian)

    def options(self) -> dict[str, Any]:
        return {"corrector": self.corrector, **self.churn_options()}

    def compile(self, grid: Grid, nfe: int):
        if not self.stochastic:
            return super().compile(grid, nfe)
        k = grid.schedule.classical_k
        b = ProgramBuilder()
        for i in range(len(grid) - 1):
            p, q = self.churn(b, grid, i), grid[i + 1]
            e0 = b.evaluate(0, p, i)
            step = (
                ddim_step(p, q, e0)
                if self.singular(grid.schedule, p)
                else (classical_step(k, p, q, [(e0, frame(k, q)[1] - frame(k, p)[1])]))
            )
            b.combine(0, 0, *step, lands=i + 1)
        last = self.churn(b, grid, len(grid) - 1)
        return b.build(b.evaluate(0, last, len(grid) - 1))

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        k = grid.schedule.classical_k
        return classical_step(
            k, grid[i], grid[i + 1], [(history[i], _tau(grid, i + 1) - _tau(grid, i))]
        )


class LMS(Classical, MultistepSolver):
    """Linear multistep (k-diffusion's ``sample_lms``): Adams-Bashforth with the exact
    integral of the Lagrange polynomial in tau; the same as DEIS's rho-AB and as the
    variable-step iPNDM."""

    name = "lms"

    def __init__(
        self,
        order: int = 4,
        lower_order_final: bool = False,
        corrector: str | UniC | None = None,
        warmup: str = "lower_order",
    ):
        self.order = check_order(order, 1, 6)
        self.lower_order_final = bool(lower_order_final)
        self.corrector = make_corrector(corrector)
        self.warmup = check_choice("warmup", warmup, WARMUPS)

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "lower_order_final": self.lower_order_final,
            "corrector": self.corrector,
            "warmup": self.warmup,
        }

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        k = grid.schedule.classical_k
        tau = [_tau(grid, i - m) for m in range(order)]
        weights = plain_weights([t - tau[0] for t in tau], _tau(grid, i + 1) - tau[0])
        return classical_step(
            k, grid[i], grid[i + 1], [(history[i - m], w) for m, w in enumerate(weights)]
        )


class IPNDM(Classical, MultistepSolver):
    """iPNDM (Zhang & Chen, 2023; Zhou et al., 2024): equal-step Adams-Bashforth weights on
    the classical derivative with lower-order warm-up, up to order 4."""

    name = "ipndm"
    lower_order_final = False

    def __init__(
        self, order: int = 4, corrector: str | UniC | None = None, warmup: str = "lower_order"
    ):
        self.order = check_order(order, 1, 4)
        self.corrector = make_corrector(corrector)
        self.warmup = check_choice("warmup", warmup, WARMUPS)

    def options(self) -> dict[str, Any]:
        return {"order": self.order, "corrector": self.corrector, "warmup": self.warmup}

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        k = grid.schedule.classical_k
        dtau = _tau(grid, i + 1) - _tau(grid, i)
        weighted = [(history[i - m], dtau * w) for m, w in enumerate(ADAMS_BASHFORTH[order])]
        return classical_step(k, grid[i], grid[i + 1], weighted)


class DPM2(Classical, SinglestepSolver):
    """k-diffusion's DPM-2: a midpoint step in the classical space whose intermediate point
    is the grid point inside the step (the log-sigma midpoint on k-diffusion's grids)."""

    name = "dpm2"
    order = 2

    def __init__(self, orders: Sequence[int] | None = None):
        self.orders = None if orders is None else tuple(int(k) for k in orders)

    def options(self) -> dict[str, Any]:
        return {"orders": self.orders}

    def stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        kk = grid.schedule.classical_k
        dtau = _tau(grid, a + j) - _tau(grid, a)
        source = sources[0] if j == 1 else sources[1]  # Euler to the inner point; then its slope
        return classical_step(kk, grid[a], grid[a + j], [(source, dtau)])


class Heun(Churn, Classical, Solver):
    """Heun's method (Karras et al., Algorithm 1): Euler to the next point, evaluate there,
    step with the average slope. Two model calls per step, so it visits (nfe + 1) / 2
    points; an even budget makes the first step a single Euler step (where the ODE is
    smoothest), and a step from zero SNR is always that Euler step."""

    name = "heun"
    order = 2

    def __init__(
        self,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        brownian: bool = False,
    ):
        self._set_churn(s_churn, s_tmin, s_tmax, s_noise, brownian)

    def options(self) -> dict[str, Any]:
        return self.churn_options()

    def grid_size(self, nfe: int, singular_start: bool) -> int:
        return two_call_plan(nfe, singular_start)[0] + 1

    def compile(self, grid: Grid, nfe: int):
        k = grid.schedule.classical_k
        _, euler = two_call_plan(nfe, self.singular(grid.schedule, grid[0]))
        b = ProgramBuilder()
        scratch = b.register()
        for i in range(len(grid) - 1):
            p, q = self.churn(b, grid, i), grid[i + 1]
            e0 = b.evaluate(0, p, i)
            singular = self.singular(grid.schedule, p)
            dtau = None if singular else frame(k, q)[1] - frame(k, p)[1]
            if i < euler:
                step = ddim_step(p, q, e0) if singular else classical_step(k, p, q, [(e0, dtau)])
                b.combine(0, 0, *step, lands=i + 1)
                continue
            b.combine(scratch, 0, *classical_step(k, p, q, [(e0, dtau)]))
            e1 = b.evaluate(scratch, q, i + 1)
            b.combine(0, 0, *classical_step(k, p, q, [(e0, dtau / 2), (e1, dtau / 2)]), lands=i + 1)
        last = self.churn(b, grid, len(grid) - 1)
        return b.build(b.evaluate(0, last, len(grid) - 1))
