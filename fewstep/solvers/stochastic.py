"""Stochastic samplers on the same core: each step is a linear combination of the state,
model predictions and a fresh per-sample standard-normal draw, with coefficients computed
before sampling.

Every sampler here preserves the marginals of the schedule's Gaussian path, so it works on
VP, EDM and flow schedules alike (on rectified flow through the equivalent VP interpolant:
nothing in the formulas assumes alpha^2 + sigma^2 = 1). A step from zero SNR (flow at
t = 1) re-noises the data prediction, x' = alpha' D + sigma' z, the exact limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ArgumentError
from ..integrals import exponential_moments, weights_from_moments
from ..model import Point
from ..program import ProgramBuilder, Term
from .base import (
    Grid,
    MultistepSolver,
    Solver,
    check_choice,
    check_order,
    check_step_ratio,
    classical_tau,
    ddim_step,
    two_call_plan,
    zero_snr,
)


def _decay(p: Point, q: Point) -> float:
    """e^{-h} = alpha_p sigma_q / (sigma_p alpha_q), h the log-SNR step (0 from zero SNR)."""
    return p.alpha * q.sigma / (p.sigma * q.alpha)


def sde_weights(offsets: Sequence[float], h: float, eta: float, rule: str) -> list:
    """Data weights of the SDE exponential integrator with noise level eta: the ODE weights
    with the kernel e^{-(1 + eta)(h - u)} (1 + eta), i.e. its moments at the step (1 + eta) h,
    and the nodes at their true offsets (DPM-Solver++ SDE; SA-Solver with eta = tau^2)."""
    big_h = (1 + eta) * h
    nodes = [u / h for u in offsets]
    moments = exponential_moments(big_h, len(nodes), "data")
    if rule == "midpoint" and len(nodes) == 2:
        v = nodes[1]
        return [moments[0] * (1 - 1 / (2 * v)), moments[0] / (2 * v)]
    if rule != "exact" and len(nodes) == 3:
        moments = [moments[0], moments[1], moments[2] / 2]  # the reference code's 3M update
    return weights_from_moments(nodes, moments)


def sde_step(p: Point, q: Point, sources: Sequence[int], weights: Sequence, eta: float):
    """x_q = (sigma_q/sigma_p) e^{-eta h} x_p + alpha_q sum w D + sigma_q sqrt(1-e^{-2eta h}) z."""
    rho = _decay(p, q)
    scale = q.sigma / p.sigma * rho**eta
    noise = q.sigma * math.sqrt(max(0.0, 1.0 - rho ** (2 * eta)))
    return scale, [Term(s, data=q.alpha * w) for s, w in zip(sources, weights, strict=True)], noise


def sde_first_order(p: Point, q: Point, source: int, eta: float):
    """First-order SDE step, written with e^{-h} = rho so that it is exact at zero SNR."""
    return sde_step(p, q, [source], [1.0 - _decay(p, q) ** (1 + eta)], eta)


class DPMSolverSDE(MultistepSolver):
    """DPM-Solver++(2M/3M) SDE (Lu et al., 2022; k-diffusion's sample_dpmpp_2m_sde and
    _3m_sde): the data-form exponential integrator of the SDE that keeps the marginals,
    with stochasticity ``eta`` (0 is the ODE, 1 the reverse-time SDE). ``max_step_ratio``
    lowers the order of steps far longer than the history they extrapolate from (None
    follows the reference code exactly)."""

    name = "dpmpp_sde"
    stochastic = True

    def __init__(
        self,
        order: int = 2,
        eta: float = 1.0,
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        brownian: bool = False,
        max_step_ratio: float | None = 4.0,
    ):
        self.order = check_order(order, 1, 3)
        if eta < 0:
            raise ArgumentError("eta", f"must be non-negative, got {eta}")
        self.eta = float(eta)
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun", "exact"))
        self.lower_order_final = bool(lower_order_final)
        self.brownian = bool(brownian)
        self.max_step_ratio = check_step_ratio(max_step_ratio)

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "eta": self.eta,
            "solver_type": self.solver_type,
            "lower_order_final": self.lower_order_final,
            "brownian": self.brownian,
            "max_step_ratio": self.max_step_ratio,
        }

    def first_order(self, grid: Grid, i: int, source: int):
        return sde_first_order(grid[i], grid[i + 1], source, self.eta)

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int):
        p, q = grid[i], grid[i + 1]
        if order == 1:
            return sde_first_order(p, q, history[i], self.eta)
        h = q.lam - p.lam
        offsets = [grid[i - k].lam - p.lam for k in range(order)]
        rule = "exact" if self.solver_type == "heun" and order == 2 else self.solver_type
        weights = sde_weights(offsets, h, self.eta, rule)
        return sde_step(p, q, [history[i - k] for k in range(order)], weights, self.eta)


class DDIMEta(MultistepSolver):
    """DDIM with stochasticity ``eta`` (Song et al., 2021): x' = alpha' D +
    sqrt(sigma'^2 - s^2) eps + s z with s = eta sigma' sqrt(1 - e^{-2h}); eta = 1 is the
    DDPM ancestral step (its posterior with the 'fixed small' variance)."""

    name = "ddim_eta"
    stochastic = True
    order = 1

    def __init__(self, eta: float = 1.0, brownian: bool = False):
        if not 0 <= eta <= 1:
            raise ArgumentError("eta", f"must lie in [0, 1], got {eta}")
        self.eta = float(eta)
        self.brownian = bool(brownian)

    def options(self) -> dict[str, Any]:
        return {"eta": self.eta, "brownian": self.brownian}

    def first_order(self, grid: Grid, i: int, source: int):
        p, q = grid[i], grid[i + 1]
        s = self.eta * q.sigma * math.sqrt(max(0.0, 1.0 - _decay(p, q) ** 2))
        return 0.0, [Term(source, data=q.alpha, noise=math.sqrt(max(0.0, q.sigma**2 - s**2)))], s

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int):
        return self.first_order(grid, i, history[i])


def ancestral_levels(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ancestral split of a step sigma -> sigma_next (noise levels sigma/alpha):
    (sigma_down, sigma_up), sigma_down^2 + sigma_up^2 = sigma_next^2."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    ratio = 0.0 if math.isinf(sigma) else sigma_next / sigma
    up = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - ratio**2)))
    return math.sqrt(max(0.0, sigma_next**2 - up**2)), up


def _ve(point: Point) -> float:
    return math.inf if point.alpha == 0 else point.sigma / point.alpha


class EulerAncestral(MultistepSolver):
    """Euler ancestral (k-diffusion): an Euler step to sigma_down, then noise sigma_up, in
    the variance-exploding noise levels sigma/alpha: x' = alpha' (D + sigma_down eps +
    sigma_up z)."""

    name = "euler_ancestral"
    stochastic = True
    order = 1

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, brownian: bool = False):
        self.eta, self.s_noise = float(eta), float(s_noise)
        self.brownian = bool(brownian)

    def options(self) -> dict[str, Any]:
        return {"eta": self.eta, "s_noise": self.s_noise, "brownian": self.brownian}

    def first_order(self, grid: Grid, i: int, source: int):
        p, q = grid[i], grid[i + 1]
        down, up = ancestral_levels(_ve(p), _ve(q), self.eta)
        return 0.0, [Term(source, data=q.alpha, noise=q.alpha * down)], q.alpha * up * self.s_noise

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int):
        return self.first_order(grid, i, history[i])


class DPMPP2SAncestral(Solver):
    """DPM-Solver++(2S) ancestral (k-diffusion): a second-order singlestep step to
    sigma_down through the log-SNR midpoint, then noise sigma_up. Two model calls per step;
    an even budget makes the first step an Euler-ancestral step."""

    name = "dpmpp_2s_ancestral"
    stochastic = True
    order = 2

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, brownian: bool = False):
        self.eta, self.s_noise = float(eta), float(s_noise)
        self.brownian = bool(brownian)

    def options(self) -> dict[str, Any]:
        return {"eta": self.eta, "s_noise": self.s_noise, "brownian": self.brownian}

    def grid_size(self, nfe: int, singular_start: bool) -> int:
        return two_call_plan(nfe, singular_start)[0] + 1

    def compile(self, grid: Grid, nfe: int):
        schedule = grid.schedule
        _, single = two_call_plan(nfe, self.singular(schedule, grid[0]))
        b = ProgramBuilder()
        scratch = b.register()
        for i in range(len(grid) - 1):
            p, q = grid[i], grid[i + 1]
            e0 = b.evaluate(0, p, i)
            down, up = ancestral_levels(_ve(p), _ve(q), self.eta)
            draws = (
                [
                    (
                        b.draw(classical_tau(schedule, p), classical_tau(schedule, q)),
                        q.alpha * up * self.s_noise,
                    )
                ]
                if up > 0
                else []
            )
            if i < single or zero_snr(p):
                b.combine(0, 0, 0.0, [Term(e0, data=q.alpha, noise=q.alpha * down)], i + 1, draws)
                continue
            lam_down = -math.log(down)
            mid = grid.point_at_lam(0.5 * (p.lam + lam_down))
            b.combine(scratch, 0, *ddim_step(p, mid, e0))
            e1 = b.evaluate(scratch, mid, i)
            # x' = alpha' [ (down / sigma_ve) x / alpha + (1 - down / sigma_ve) D_mid ] + noise
            ratio = down / _ve(p)
            b.combine(
                0,
                0,
                q.alpha * ratio / p.alpha,
                [Term(e1, data=q.alpha * (1 - ratio))],
                i + 1,
                draws,
            )
        return b.build(b.evaluate(0, grid[-1], len(grid) - 1))


def noise_scale_sde5(x: np.ndarray) -> np.ndarray:
    """ER-SDE's default noise-scale function ('SDE_5' of the reference code): x (e^{x^0.3} + 10)."""
    return x * (np.exp(x**0.3) + 10.0)


class ERSDE(MultistepSolver):
    """ER-SDE-Solver (Cui et al., 2023) in its VP form: the extended reverse-time SDE
    solved with noise-scale function f of rho = sigma/alpha,
        x' = (alpha'/alpha) r x + alpha' [(1 - r) D + c1 D' + c2 D'']
             + alpha' sqrt(rho'^2 - rho^2 r^2) z,
    r = f(rho')/f(rho), the derivatives backward divided differences in rho as in the
    reference code, and its integrals c1, c2 by Gauss-Legendre quadrature (the reference
    code sums 100 rectangles). Orders (stages) 1-3."""

    name = "er_sde"
    stochastic = True
    lower_order_final = False

    def __init__(self, order: int = 3, brownian: bool = False, s_noise: float = 1.0):
        self.order = check_order(order, 1, 3)
        self.brownian = bool(brownian)
        self.s_noise = float(s_noise)

    def options(self) -> dict[str, Any]:
        return {"order": self.order, "brownian": self.brownian, "s_noise": self.s_noise}

    def first_order(self, grid: Grid, i: int, source: int):
        q = grid[i + 1]
        return 0.0, [Term(source, data=q.alpha)], q.sigma * self.s_noise

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int):
        p, q = grid[i], grid[i + 1]
        rho, rho_n = _ve(p), _ve(q)
        f = noise_scale_sde5
        r = float(f(np.float64(rho_n)) / f(np.float64(rho)))
        nodes, weights = np.polynomial.legendre.leggauss(24)
        s = 0.5 * (rho - rho_n) * (nodes + 1) + rho_n
        w = 0.5 * (rho - rho_n) * weights
        c1 = rho_n - rho + float(f(rho_n) * np.sum(w / f(s)))
        c2 = (rho_n - rho) ** 2 / 2 + float(f(rho_n) * np.sum(w * (s - rho) / f(s)))
        coef = {history[i]: 1.0 - r}
        if order >= 2:
            rho1 = _ve(grid[i - 1])
            d1 = {history[i]: 1 / (rho - rho1), history[i - 1]: -1 / (rho - rho1)}
            for k, v in d1.items():
                coef[k] = coef.get(k, 0.0) + c1 * v
        if order >= 3:
            rho2 = _ve(grid[i - 2])
            d1_prev = {history[i - 1]: 1 / (rho1 - rho2), history[i - 2]: -1 / (rho1 - rho2)}
            for k in set(d1) | set(d1_prev):
                dd = 2 * (d1.get(k, 0.0) - d1_prev.get(k, 0.0)) / (rho - rho2)
                coef[k] = coef.get(k, 0.0) + c2 * dd
        noise = q.alpha * math.sqrt(max(0.0, rho_n**2 - rho**2 * r**2)) * self.s_noise
        return q.alpha / p.alpha * r, [Term(k, data=q.alpha * v) for k, v in coef.items()], noise


class SASolver(MultistepSolver):
    """SA-Solver (Xue et al., 2023): stochastic Adams predictor (order ``predictor_order``)
    and corrector (``corrector_order``, reusing the predictor's noise), exponential in
    log-SNR with stochasticity tau(t)^2: tau = ``tau`` inside the native-time window
    ``tau_window`` (fractions of the schedule's range; diffusers uses timesteps 200-800 of
    1000), 0 outside (there the step is the deterministic Adams method). ``max_step_ratio``
    as in ``DPMSolverSDE``."""

    name = "sa_solver"
    stochastic = True
    lower_order_final = False

    def __init__(
        self,
        predictor_order: int = 3,
        corrector_order: int = 4,
        tau: float = 1.0,
        tau_window: tuple[float, float] = (0.2, 0.8),
        brownian: bool = False,
        max_step_ratio: float | None = 4.0,
    ):
        self.order = check_order(predictor_order, 1, 4)
        self.corrector_order = check_order(corrector_order, 0, 4)
        self.tau, self.tau_window = float(tau), tuple(float(v) for v in tau_window)
        self.brownian = bool(brownian)
        self.max_step_ratio = check_step_ratio(max_step_ratio)
        self.corrector = _SACorrector(self) if self.corrector_order > 0 else None

    def options(self) -> dict[str, Any]:
        return {
            "predictor_order": self.order,
            "corrector_order": self.corrector_order,
            "tau": self.tau,
            "tau_window": self.tau_window,
            "brownian": self.brownian,
            "max_step_ratio": self.max_step_ratio,
        }

    def eta(self, grid: Grid, point: Point) -> float:
        lo, hi = grid.schedule.t_min, grid.schedule.t_max
        a, b = (lo + f * (hi - lo) for f in self.tau_window)
        return self.tau**2 if a <= point.t <= b else 0.0

    def first_order(self, grid: Grid, i: int, source: int):
        return sde_first_order(grid[i], grid[i + 1], source, self.eta(grid, grid[i]))

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int):
        p, q = grid[i], grid[i + 1]
        eta = self.eta(grid, p)
        if order == 1:
            return sde_first_order(p, q, history[i], eta)
        offsets = [grid[i - k].lam - p.lam for k in range(order)]
        weights = sde_weights(offsets, q.lam - p.lam, eta, "exact")
        return sde_step(p, q, [history[i - k] for k in range(order)], weights, eta)


class _SACorrector:
    """SA-Solver's stochastic Adams-Moulton corrector: the polynomial through the new
    evaluation and the previous ones (``corrector_order`` in all), the predictor's noise."""

    def __init__(self, solver: SASolver):
        self.solver = solver

    def correct(self, grid: Grid, i: int, history: Sequence[int], order: int):
        p, q = grid[i], grid[i + 1]
        eta = self.solver.eta(grid, p)
        points = [i + 1]
        while len(points) < self.solver.corrector_order and i + 1 - len(points) >= 0:
            j = i + 1 - len(points)
            if self.solver.singular(grid.schedule, grid[j]):
                break  # no information about derivatives at zero SNR
            points.append(j)
        offsets = [grid[j].lam - p.lam for j in points]
        weights = sde_weights(offsets, q.lam - p.lam, eta, "exact")
        return sde_step(p, q, [history[j] for j in points], weights, eta)
