"""Exponential integrators in log-SNR time: DDIM, DPM-Solver, DPM-Solver++, DEIS, PNDM.

Each is a coefficient rule on ``fewstep.program``: a step from p to q is

    data form:   x_q = (sigma_q / sigma_p) x_p + alpha_q sum_j w_j D_j
    noise form:  x_q = (alpha_q / alpha_p) x_p - sigma_q sum_j w_j eps_j

with weights w_j from ``fewstep.integrals``: the exact integral of the polynomial through
the evaluations against the exponential kernel ("exact", the rule DEIS and the Taylor forms
of DPM-Solver reduce to), or DPM-Solver's cheaper "midpoint" second-order rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ..errors import ArgumentError
from ..integrals import (
    exponential_moments,
    exponential_weights,
    midpoint_weights,
    quadrature_moments,
    weights_from_moments,
)
from ..model import Point
from ..program import ProgramBuilder, Term
from .base import (
    Form,
    Grid,
    MultistepSolver,
    SinglestepSolver,
    Step,
    check_choice,
    check_order,
    check_orders,
    check_step_ratio,
    ddim_step,
    exponential_step,
)
from .unipc import UniC, make_corrector

SolverType = Literal["midpoint", "heun", "exact"]


def peer_third_order_weights(offsets: Sequence[float], h: float, form: Form) -> list:
    """The third-order multistep update of the DPM-Solver reference code (and of diffusers
    and k-diffusion): its second divided difference enters with half the weight of the
    Taylor term it stands for, so the step is exact only for linear predictions and the
    method converges at second order (see README, "Where the peers deviate")."""
    nodes = [u / h for u in offsets]
    m0, m1, m2 = exponential_moments(h, 3, form)
    return weights_from_moments(nodes, [m0, m1, m2 / 2])


WARMUPS = ("lower_order", "singlestep")


def exact_singlestep_stage(grid: Grid, a: int, j: int, sources: Sequence[int], form: Form) -> Step:
    """The state at grid point a + j from point a, integrating the polynomial through all
    earlier stages exactly: an explicit exponential Runge-Kutta rule of order j."""
    p, q = grid[a], grid[a + j]
    offsets = [grid[a + m].lam - p.lam for m in range(j)]
    weights = exponential_weights(offsets, q.lam - p.lam, form)
    return exponential_step(p, q, list(sources[:j]), weights, form)


def check_frame(frame: str, form: str) -> str:
    check_choice("frame", frame, ("logsnr", "classical"))
    if frame == "classical" and form != "data":
        raise ArgumentError(
            "frame", "the classical frame is defined for data-form solvers", "form='data'"
        )
    return frame


class DDIM(MultistepSolver):
    """DDIM (Song et al., 2021): the first-order exponential integrator in data form;
    identical to DPM-Solver-1, DPM-Solver++1 and, in exact arithmetic, to Euler."""

    name = "ddim"
    order = 1

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        return ddim_step(grid[i], grid[i + 1], history[i])


class DPMSolverMultistep(MultistepSolver):
    """DPM-Solver(++) multistep (Lu et al., 2022): Adams-Bashforth in log-SNR on data
    (``form="data"``, DPM-Solver++) or noise predictions.

    ``solver_type``: "exact" integrates the interpolating polynomial exactly at every order
    (third order is truly third order); "heun" and "midpoint" are the reference code's
    second-order rules, and with them a third-order step uses the reference code's update.
    """

    name = "dpm_solver_multistep"

    def __init__(
        self,
        order: int = 2,
        form: Form = "data",
        solver_type: SolverType = "midpoint",
        lower_order_final: bool = True,
        corrector: str | UniC | None = None,
        warmup: str = "lower_order",
        frame: str = "logsnr",
        orders: Sequence[int] | None = None,
        max_step_ratio: float | None = 4.0,
    ):
        self.order = check_order(order, 1, 3)
        self.form = check_choice("form", form, ("data", "noise"))
        self.frame = check_frame(frame, self.form)
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun", "exact"))
        self.orders = check_orders(orders, self.order)
        self.lower_order_final = bool(lower_order_final)
        self.corrector = make_corrector(corrector)
        self.warmup = check_choice("warmup", warmup, WARMUPS)
        self.max_step_ratio = check_step_ratio(max_step_ratio)

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "form": self.form,
            "solver_type": self.solver_type,
            "lower_order_final": self.lower_order_final,
            "corrector": self.corrector,
            "warmup": self.warmup,
            "frame": self.frame,
            "orders": self.orders,
            "max_step_ratio": self.max_step_ratio,
        }

    def warmup_stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        return exact_singlestep_stage(grid, a, j, sources, self.form)

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        p, q = grid[i], grid[i + 1]
        h = q.lam - p.lam
        offsets = [grid[i - k].lam - p.lam for k in range(order)]
        if order == 2 and self.solver_type == "midpoint":
            weights = midpoint_weights(offsets[1], h, self.form)
        elif order == 3 and self.solver_type != "exact":
            weights = peer_third_order_weights(offsets, h, self.form)
        else:
            weights = exponential_weights(offsets, h, self.form)
        return exponential_step(p, q, [history[i - k] for k in range(order)], weights, self.form)


class DEIS(MultistepSolver):
    """DEIS (Zhang & Chen, 2023): the exponential integrator of the noise prediction with
    Adams-Bashforth extrapolation. ``variant="tab"`` (the paper's t-AB) extrapolates in the
    model's native time and integrates against d(sigma/alpha) by quadrature;
    ``variant="logrho"`` extrapolates in log(sigma/alpha) with closed-form weights
    (diffusers' DEIS; identical to noise-form DPM-Solver with the exact rule).
    ``max_step_ratio`` is off by default: t-AB's nodes are equally spaced in native time on
    a time-uniform grid, and lowering its order there was measured to cost accuracy."""

    name = "deis"

    def __init__(
        self,
        order: int = 3,
        variant: str = "tab",
        lower_order_final: bool = True,
        corrector: str | UniC | None = None,
        warmup: str = "lower_order",
        max_step_ratio: float | None = None,
    ):
        self.order = check_order(order, 1, 3)
        self.variant = check_choice("variant", variant, ("tab", "logrho"))
        self.lower_order_final = bool(lower_order_final)
        self.corrector = make_corrector(corrector)
        self.warmup = check_choice("warmup", warmup, WARMUPS)
        self.max_step_ratio = check_step_ratio(max_step_ratio)

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "variant": self.variant,
            "lower_order_final": self.lower_order_final,
            "corrector": self.corrector,
            "warmup": self.warmup,
            "max_step_ratio": self.max_step_ratio,
        }

    def warmup_stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        return exact_singlestep_stage(grid, a, j, sources, "noise")

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        p, q = grid[i], grid[i + 1]
        sources = [history[i - k] for k in range(order)]
        if self.variant == "logrho":
            offsets = [grid[i - k].lam - p.lam for k in range(order)]
            return exponential_step(
                p, q, sources, exponential_weights(offsets, q.lam - p.lam, "noise"), "noise"
            )
        schedule = grid.schedule

        def rho_rate(t):  # d(sigma / alpha) / dt
            alpha, sigma = schedule.alpha_sigma(t)
            d_alpha, d_sigma = schedule.alpha_sigma_derivative(t)
            return ((d_sigma * alpha - sigma * d_alpha) / alpha**2).numpy()

        moments = quadrature_moments(rho_rate, p.t, q.t, order, breaks=schedule.kinks())
        nodes = [(grid[i - k].t - p.t) / (q.t - p.t) for k in range(order)]
        weights = weights_from_moments(nodes, moments)
        return q.alpha / p.alpha, [
            Term(s, noise=q.alpha * w) for s, w in zip(sources, weights, strict=True)
        ]


class DPMSolverSinglestep(SinglestepSolver):
    """DPM-Solver(++) singlestep (Lu et al., 2022): explicit exponential Runge-Kutta steps of
    order 1-3 whose inner stages are the grid points inside the step.

    ``solver_type``: "paper" is DPM-Solver-2/3 as published (second order: the midpoint
    rule; third order: the second stage integrates the line through the first, the final
    update uses the second stage only); "midpoint" and "heun" are diffusers' variants
    ("heun" integrates the quadratic through all stages exactly at third order).
    """

    name = "dpm_solver"

    def __init__(
        self,
        order: int = 3,
        form: Form = "noise",
        solver_type: str = "paper",
        orders: Sequence[int] | None = None,
        frame: str = "logsnr",
    ):
        self.order = check_order(order, 1, 3)
        self.form = check_choice("form", form, ("data", "noise"))
        self.frame = check_frame(frame, self.form)
        self.solver_type = check_choice("solver_type", solver_type, ("paper", "midpoint", "heun"))
        self.orders = None if orders is None else tuple(int(k) for k in orders)

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "form": self.form,
            "solver_type": self.solver_type,
            "orders": self.orders,
            "frame": self.frame,
        }

    def stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        p, q = grid[a], grid[a + j]
        h = q.lam - p.lam
        u = [grid[a + m].lam - p.lam for m in range(j)]
        if j == 1:
            used, weights = [0], exponential_weights([0.0], h, self.form)
        elif j == 2 and (
            (k == 2 and self.solver_type != "heun") or (k == 3 and self.solver_type == "midpoint")
        ):
            used, weights = [0, 1], midpoint_weights(u[1], h, self.form)
        elif j == 2:
            used, weights = [0, 1], exponential_weights(u, h, self.form)
        elif self.solver_type == "heun":
            used, weights = [0, 1, 2], exponential_weights(u, h, self.form)
        else:  # the published third-order update: the line through the start and stage 2
            used, weights = [0, 2], exponential_weights([u[0], u[2]], h, self.form)
        return exponential_step(p, q, [sources[m] for m in used], weights, self.form)


# Adams-Bashforth weights for equal steps, newest first (PNDM's and iPNDM's tables).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class PNDM(MultistepSolver):
    """PNDM's pseudo linear multistep method (PLMS; Liu et al., 2022): equal-step
    Adams-Bashforth on the noise prediction, moved along with the DDIM transfer. The first
    step is a pseudo improved-Euler step (one extra model call), then orders 2, 3, 4, as
    diffusers' PNDMScheduler with ``skip_prk_steps=True`` (what Stable Diffusion used)."""

    name = "pndm"
    order = 4
    lower_order_final = False

    def grid_size(self, nfe: int, singular_start: bool) -> int:
        return nfe - 1 if nfe >= 3 and not singular_start else nfe

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        weights = ADAMS_BASHFORTH[order]
        return self._transfer(
            grid[i], grid[i + 1], [(history[i - k], w) for k, w in enumerate(weights)]
        )

    @staticmethod
    def _transfer(p: Point, q: Point, weighted: Sequence[tuple[int, float]]) -> Step:
        # DDIM in noise form: x_q = (alpha_q/alpha_p) x_p - (alpha_q sigma_p/alpha_p - sigma_q) eps
        c = q.alpha * p.sigma / p.alpha - q.sigma
        return q.alpha / p.alpha, [Term(s, noise=-c * w) for s, w in weighted]

    def compile(self, grid: Grid, nfe: int):
        if nfe == len(grid):  # no room for the warm-up call (nfe < 3, or a zero-SNR start)
            return super().compile(grid, nfe)
        # Step 0 as improved Euler: predict with eps_0, evaluate there, move with the average.
        b = ProgramBuilder()
        scratch = b.register()
        e0 = b.evaluate(0, grid[0], 0)
        b.combine(scratch, 0, *self._transfer(grid[0], grid[1], [(e0, 1.0)]))
        e_pred = b.evaluate(scratch, grid[1], 1)
        b.combine(0, 0, *self._transfer(grid[0], grid[1], [(e0, 0.5), (e_pred, 0.5)]), lands=1)
        history = [e0, b.evaluate(0, grid[1], 1)]
        for i in range(1, len(grid) - 1):
            order = min(self.order, i + 1)
            b.combine(0, 0, *self.step(grid, i, history, order), lands=i + 1)
            history.append(b.evaluate(0, grid[i + 1], i + 1))
        return b.build(history[-1])
