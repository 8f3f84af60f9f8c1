"""UniPC (Zhao et al., 2023): the unified predictor (UniP) and corrector (UniC).

Both are exponential steps whose higher-order terms weight the scaled differences
D1_k = (m_k - m_0) / r_k of past (and, for UniC, the new) evaluations, r_k = (lambda_k -
lambda_0) / h, by coefficients rho that solve the order conditions R rho = b with B(h) = h
("bh1") or e^h - 1 ("bh2"). UniC reuses the model evaluation at the predicted point, so a
corrected step costs no extra model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError
from ..integrals import expm1, exponential_weights, solve_small
from ..model import Point
from .base import (
    Form,
    Grid,
    MultistepSolver,
    Step,
    check_choice,
    check_order,
    check_orders,
    check_step_ratio,
    exponential_step,
)


def _order_conditions(h: float, order: int, variant: str, form: Form):
    """h phi_1 (the first-order weight), the right-hand sides b_1..b_order and B(h)."""
    hh = -h if form == "data" else h
    h_phi_1 = expm1(hh)
    big_b = hh if variant == "bh1" else expm1(hh)
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / big_b)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b, big_b


def _weights(p: Point, q: Point, nodes: Sequence[Point], rhos: Sequence[float], h_phi_1, big_b):
    """Weights of (m_0, m_1, ...) in  -h phi_1 m_0 - B(h) sum_k rho_k (m_k - m_0) / r_k,
    for nodes m_1, ... at the given points (the new point has r = 1)."""
    h = q.lam - p.lam
    rks = [(node.lam - p.lam) / h for node in nodes]
    w0 = -h_phi_1 + big_b * sum(rho / r for rho, r in zip(rhos, rks, strict=True))
    return [w0] + [-big_b * rho / r for rho, r in zip(rhos, rks, strict=True)]


def _as_step(
    p: Point, q: Point, sources: Sequence[int], weights: Sequence[float], form: Form
) -> Step:
    # x_t = scale x + (alpha_t or sigma_t) * sum w m  (UniPC's sign convention, both forms)
    sign = 1.0 if form == "data" else -1.0
    return exponential_step(p, q, sources, [sign * w for w in weights], form)


def unip_step(
    grid: Grid, i: int, history: Sequence[int], order: int, variant: str, form: Form
) -> Step:
    """UniP-order: predictor from grid[i] to grid[i + 1] with ``order`` evaluations."""
    p, q = grid[i], grid[i + 1]
    h_phi_1, b, big_b = _order_conditions(q.lam - p.lam, order, variant, form)
    nodes = [grid[i - k] for k in range(1, order)]
    if order == 1:
        rhos = []
    elif order == 2:
        rhos = [0.5]
    else:
        rks = [(node.lam - p.lam) / (q.lam - p.lam) for node in nodes]
        matrix = [[r ** (row) for r in rks] for row in range(order - 1)]
        rhos = solve_small(matrix, b[: order - 1])
    weights = _weights(p, q, nodes, rhos, h_phi_1, big_b)
    return _as_step(p, q, [history[i - k] for k in range(order)], weights, form)


@dataclass(frozen=True)
class UniC:
    """The UniC corrector of the step grid[i] -> grid[i + 1] (order = the predictor's)."""

    variant: str = "bh2"
    form: Form = "data"

    def __post_init__(self):
        check_choice("corrector variant", self.variant, ("bh1", "bh2"))
        check_choice("corrector form", self.form, ("data", "noise"))

    def correct(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        p, q = grid[i], grid[i + 1]
        h = q.lam - p.lam
        h_phi_1, b, big_b = _order_conditions(h, order, self.variant, self.form)
        nodes = [grid[i - k] for k in range(1, order)] + [q]
        if order == 1:
            rhos = [0.5]
        else:
            rks = [(node.lam - p.lam) / h for node in nodes]
            rhos = solve_small([[r**row for r in rks] for row in range(order)], b[:order])
        weights = _weights(p, q, nodes, rhos, h_phi_1, big_b)
        sources = [history[i - k] for k in range(order)] + [history[i + 1]]
        return _as_step(p, q, sources, weights, self.form)


def make_corrector(
    corrector: str | UniC | None, variant: str = "bh2", form: Form = "data"
) -> UniC | None:
    """A corrector from a name ("unic"), an instance, or None."""
    if corrector is None or isinstance(corrector, UniC):
        return corrector
    check_choice("corrector", corrector, ("unic",))
    return UniC(variant, form)


class UniPC(MultistepSolver):
    """UniPC: UniP-p predictor with the UniC corrector (``corrector=None`` gives UniP alone)."""

    name = "unipc"

    def __init__(
        self,
        order: int = 3,
        variant: str = "bh2",
        form: Form = "data",
        lower_order_final: bool = True,
        corrector: str | UniC | None = "unic",
        warmup: str = "lower_order",
        frame: str = "logsnr",
        orders: Sequence[int] | None = None,
        max_step_ratio: float | None = 4.0,
    ):
        self.order = check_order(order, 1, 3)
        self.variant = check_choice("variant", variant, ("bh1", "bh2"))
        self.form = check_choice("form", form, ("data", "noise"))
        self.lower_order_final = bool(lower_order_final)
        self.corrector = make_corrector(corrector, variant, form)
        self.warmup = check_choice("warmup", warmup, ("lower_order", "singlestep"))
        self.frame = check_choice("frame", frame, ("logsnr", "classical"))
        self.orders = check_orders(orders, self.order)
        self.max_step_ratio = check_step_ratio(max_step_ratio)
        if self.frame == "classical" and self.form != "data":
            raise ArgumentError("frame", "the classical frame is defined for data-form solvers")

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "variant": self.variant,
            "form": self.form,
            "lower_order_final": self.lower_order_final,
            "corrector": self.corrector,
            "warmup": self.warmup,
            "frame": self.frame,
            "orders": self.orders,
            "max_step_ratio": self.max_step_ratio,
        }

    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        return unip_step(grid, i, history, order, self.variant, self.form)

    def warmup_stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        p, q = grid[a], grid[a + j]
        offsets = [grid[a + m].lam - p.lam for m in range(j)]
        weights = exponential_weights(offsets, q.lam - p.lam, self.form)
        return exponential_step(p, q, list(sources[:j]), weights, self.form)
