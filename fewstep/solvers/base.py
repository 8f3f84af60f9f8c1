"""What a solver is: a compiler from a time grid to a ``Program``.

Shared here: the ``Grid`` a solver compiles; the two skeletons every solver uses (multistep:
one model call per grid point, each step a combination of past evaluations, optionally
corrected; singlestep: a step of order k spans k grid intervals, its intermediate stages
sit on grid points); and the first-order exponential step (DDIM) that every solver falls
back to where higher order has no meaning (a step that starts at zero SNR).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol

from ..errors import ArgumentError
from ..integrals import log
from ..model import Point, points
from ..program import Program, ProgramBuilder, Term
from ..schedules import NoiseSchedule

Step = tuple[float, list[Term]]  # (scale of the start state, terms over evaluations); a
# stochastic step appends the standard deviation of the fresh noise it adds
Form = Literal["data", "noise"]


@dataclass(frozen=True)
class Grid:
    """The points a solver visits, with the schedule they come from."""

    schedule: NoiseSchedule
    points: tuple[Point, ...]

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, times) -> Grid:
        return cls(schedule, tuple(points(schedule, times)))

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> Point:
        return self.points[i]

    def point_at_lam(self, lam: float) -> Point:
        """The point of the schedule at log-SNR ``lam`` (adaptive intermediate stages)."""
        return points(self.schedule, [float(self.schedule.t_of_lam(lam))])[0]


def framed(grid: Grid, k: float) -> Grid:
    """The grid as a data-form exponential integrator sees it in the classical frame of
    slope k (``NoiseSchedule.classical_k``): alpha -> c = alpha - k sigma and
    lambda -> log(c / sigma). The data-form step x_q = (sigma_q/sigma_p) x_p + c_q sum w D
    is then exponential in -log(sigma / c): the same as the usual form for VP and EDM
    (k = 0), exponential in log t on rectified flow (k = -1), as k-diffusion's samplers
    are when ComfyUI runs flow models."""
    if k == 0.0:
        return grid
    pts = []
    for p in grid.points:
        c = p.alpha - k * p.sigma
        pts.append(replace(p, alpha=c, lam=log(c / p.sigma)))
    return Grid(grid.schedule, tuple(pts))


def zero_snr(point: Point) -> bool:
    """alpha = 0: pure noise, where log-SNR is -inf and only the first-order step is defined."""
    return point.alpha == 0.0


def ddim_step(p: Point, q: Point, source: int) -> Step:
    """First-order exponential step in data form from p to q (DDIM, DPM-Solver-1):
    x_q = (sigma_q / sigma_p) x_p + (alpha_q - alpha_p sigma_q / sigma_p) D_p.
    Written without e^{-h} so that it is exact at alpha_p = 0."""
    ratio = q.sigma / p.sigma
    return ratio, [Term(source, data=q.alpha - p.alpha * ratio)]


def exponential_step(
    p: Point, q: Point, sources: Sequence[int], weights: Sequence, form: Form
) -> Step:
    """The exponential-integrator step p -> q with weights over evaluations ``sources``:
    data form  x_q = (sigma_q / sigma_p) x_p + alpha_q sum_j w_j D_j,
    noise form x_q = (alpha_q / alpha_p) x_p - sigma_q sum_j w_j eps_j."""
    pairs = zip(sources, weights, strict=True)
    if form == "data":
        return q.sigma / p.sigma, [Term(s, data=q.alpha * w) for s, w in pairs]
    return q.alpha / p.alpha, [Term(s, noise=-q.sigma * w) for s, w in pairs]


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ArgumentError(name, f"unknown {value!r}", f"one of {list(allowed)}")
    return value


class Solver(ABC):
    """Compiles a ``Grid`` into a ``Program`` whose number of model calls is exactly the nfe."""

    name: ClassVar[str]
    #: the convergence order this configuration should show (what the order tests check)
    order: int = 1
    stochastic: ClassVar[bool] = False
    #: adaptive solvers choose their own steps from a tolerance (no nfe, no compile)
    adaptive: ClassVar[bool] = False

    def grid_size(self, nfe: int, singular_start: bool) -> int:
        """How many grid points the spacing must produce for ``nfe`` model calls, when the
        grid starts (or not) at a point where this solver is singular."""
        return nfe

    #: "logsnr": exponential in log(alpha / sigma); "classical": in the classical frame
    #: (see ``framed``; only data-form exponential solvers offer the choice)
    frame: str = "logsnr"

    def nfe_for_points(self, n_points: int) -> int:
        """The largest nfe for which this solver visits ``n_points`` grid points (for callers
        that start from a grid: k-diffusion-style sigmas, diffusers timesteps, segments)."""
        fits = [
            n for n in range(n_points, 3 * n_points + 2) if self.grid_size(n, False) == n_points
        ]
        if not fits:
            raise ArgumentError("sigmas", f"{self.name!r} cannot use a grid of {n_points} points")
        return max(fits)

    def singular(self, schedule: NoiseSchedule, point: Point) -> bool:
        """Whether this solver's rule is undefined at ``point`` beyond first order (zero SNR
        for exponential integrators): a step starting there is taken as DDIM, and the
        evaluation there does not enter higher-order rules."""
        if self.frame == "classical":
            return point.alpha - schedule.classical_k * point.sigma == 0.0
        return zero_snr(point)

    def coefficient_grid(self, grid: Grid) -> Grid:
        """The points the coefficient rules see (the model is evaluated at the real ones)."""
        return framed(grid, grid.schedule.classical_k) if self.frame == "classical" else grid

    @abstractmethod
    def compile(self, grid: Grid, nfe: int) -> Program:
        """The program for this grid, making exactly ``nfe`` model calls (the grid has
        ``grid_size(nfe, ...)`` points)."""

    def options(self) -> dict[str, Any]:
        """The solver's settings (for saved configs and reports)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def two_call_plan(nfe: int, singular_start: bool) -> tuple[int, int]:
    """(steps, single-call steps) for a sampler with two model calls per step, plus the final
    data prediction: an even budget, or a start where only a one-call step is defined, makes
    the first steps single-call ones."""
    if nfe <= 1:
        return 0, 0
    steps = math.ceil((nfe - 1 + singular_start) / 2)
    return steps, 2 * steps - (nfe - 1)


class Corrector(Protocol):
    """Corrects the landing state of step i once the model has been evaluated there."""

    def correct(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        """(scale of the step's start state, terms); ``history[k]`` is the evaluation at grid
        point k for k <= i + 1 (the last one made at the predicted state)."""


def check_orders(orders: Sequence[int] | None, high: int) -> tuple[int, ...] | None:
    """Per-step maximum orders, each in [1, high]."""
    if orders is None:
        return None
    out = tuple(int(k) for k in orders)
    if any(not 1 <= k <= high for k in out):
        raise ArgumentError("orders", f"per-step orders must lie in [1, {high}], got {list(out)}")
    return out


def check_order(order: int, low: int, high: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not low <= order <= high:
        raise ArgumentError("order", f"must be an integer in [{low}, {high}], got {order!r}")
    return order


def check_step_ratio(ratio: float | None) -> float | None:
    """A ``max_step_ratio``: None or a number >= 1."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
        raise ArgumentError("max_step_ratio", f"must be None or a number >= 1, got {ratio!r}")
    return float(ratio)


class MultistepSolver(Solver):
    """One model call per grid point: evaluate at point i, step to i + 1 with a combination
    of the current state and the last ``order`` evaluations.

    Warm-up (no history yet): ``warmup="lower_order"`` raises the order one step at a time
    (the peers' way); its first-order first step leaves an O(h^2) error that caps the
    global order at 2 as steps shrink. ``warmup="singlestep"`` takes the first ``order``
    intervals as one singlestep step whose inner stages are the grid points (see
    ``warmup_stage``): the same model calls, and the full order. ``lower_order_final`` caps
    the last step at order 2, which steadies few-step sampling. With a ``corrector``
    (UniC), the state at i + 1 is corrected after the model is evaluated there; the next
    step reuses that evaluation, so correction costs no call, and the final point is not
    corrected (its evaluation is the output)."""

    lower_order_final: bool = True
    corrector: Corrector | None = None
    warmup: str = "lower_order"

    #: per-step maximum orders (a tuner's per-step choice); None: ``order`` everywhere
    orders: tuple[int, ...] | None = None
    #: lower a step's order while the step is longer (in log-SNR) than this many times the
    #: mean spacing of the evaluations it extrapolates from; None: never. Extrapolating a
    #: polynomial far past its nodes amplifies their errors, worst for SDE kernels, which
    #: weight the end of the step (a grid uniform in flow time ends with such a step)
    max_step_ratio: float | None = None

    def step_order(self, grid: Grid, i: int) -> int:
        order = min(self.order, i + 1)
        if self.orders is not None:
            order = min(order, self.orders[i] if i < len(self.orders) else self.order)
        if self.lower_order_final and i == len(grid) - 2:
            order = min(order, 2)
        usable = 0
        while usable < order and not self.singular(grid.schedule, grid[i - usable]):
            usable += 1
        while usable > 1 and self.too_long(grid, i, usable):
            usable -= 1
        return max(usable, 1)

    def too_long(self, grid: Grid, i: int, order: int) -> bool:
        """Whether step i is too long for a rule of ``order`` (see ``max_step_ratio``)."""
        if self.max_step_ratio is None:
            return False
        spacing = (grid[i].lam - grid[i - order + 1].lam) / (order - 1)
        return grid[i + 1].lam - grid[i].lam > self.max_step_ratio * spacing

    @abstractmethod
    def step(self, grid: Grid, i: int, history: Sequence[int], order: int) -> Step:
        """(scale, terms) of the step from grid[i] to grid[i + 1] using ``order`` evaluations
        history[i], history[i - 1], ... (``history[k]`` was made at grid point k)."""

    def first_order(self, grid: Grid, i: int, source: int) -> Step:
        """The step taken where the rule is singular (from zero SNR): DDIM."""
        return ddim_step(grid[i], grid[i + 1], source)

    def warmup_stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        """The singlestep warm-up rule (see ``SinglestepSolver.stage``)."""
        raise ArgumentError(
            "warmup", f"{self.name!r} has no singlestep warm-up", "use 'lower_order'"
        )

    def compile(self, grid: Grid, nfe: int) -> Program:
        b = ProgramBuilder()
        coef = self.coefficient_grid(grid)
        predicted = b.register()
        history = [b.evaluate(0, grid[0], 0)]
        n, i = len(grid), 0
        warm = self.warmup == "singlestep" and self.order > 1
        while i < n - 1:
            singular = self.singular(grid.schedule, grid[i])
            if warm and not singular:
                k = min(self.order, n - 1 - i)
                if self.lower_order_final and i + k == n - 1:
                    k = min(k, 2)
                sources = [history[i]]
                for j in range(1, k):
                    b.combine(predicted, 0, *self.warmup_stage(coef, i, k, j, sources))
                    sources.append(b.evaluate(predicted, grid[i + j], i + j))
                    history.append(sources[-1])
                if k > 1:
                    b.combine(0, 0, *self.warmup_stage(coef, i, k, k, sources), lands=i + k)
                    history.append(b.evaluate(0, grid[i + k], i + k))
                    i, warm = i + k, False
                    continue
            order = 1 if singular else self.step_order(coef, i)
            step = (
                self.first_order(coef, i, history[i])
                if singular
                else self.step(coef, i, history, order)
            )
            draws = _draws(b, grid, i, step)
            correct = self.corrector is not None and i < n - 2 and not zero_snr(coef[i])
            target = predicted if correct else 0
            b.combine(target, 0, step[0], step[1], lands=None if correct else i + 1, draws=draws)
            history.append(b.evaluate(target, grid[i + 1], i + 1))
            if correct:
                step = self.corrector.correct(coef, i, history, order)
                same = [(d, step[2]) for d, _ in draws] if len(step) > 2 else []
                b.combine(0, 0, step[0], step[1], lands=i + 1, draws=same)
            i += 1
        return b.build(history[-1])


def classical_tau(schedule: NoiseSchedule, point: Point) -> float:
    """sigma / (alpha - k sigma): the noise level a Brownian tree is indexed by."""
    c = point.alpha - schedule.classical_k * point.sigma
    return math.inf if c == 0 else point.sigma / c


def _draws(b: ProgramBuilder, grid: Grid, i: int, step) -> list[tuple[int, float]]:
    """A fresh draw for a stochastic step (one that carries a noise std), else none."""
    if len(step) < 3 or step[2] == 0.0:
        return []
    tau0 = classical_tau(grid.schedule, grid[i])
    tau1 = classical_tau(grid.schedule, grid[i + 1])
    return [(b.draw(tau0, tau1), step[2])]


class SinglestepSolver(Solver):
    """A step of order k spans k grid intervals: the model is evaluated at its start and at
    the k - 1 grid points inside it, then the state lands on the k-th point. Every grid
    point is evaluated exactly once, so nfe equals the number of grid points (diffusers'
    convention; on a log-SNR-uniform grid the inner points sit at r = 1/2 or 1/3, 2/3, the
    DPM-Solver defaults). ``orders`` fixes the order of each step (they must sum to
    nfe - 1); by default all steps have ``order`` and any remainder is one lower-order step
    at the start, where the probability-flow ODE is smoothest."""

    orders: tuple[int, ...] | None = None

    def plan_orders(self, intervals: int, singular_start: bool) -> list[int]:
        if self.orders is not None:
            orders = list(self.orders)
            if sum(orders) != intervals or any(not 1 <= k <= self.order for k in orders):
                raise ArgumentError(
                    "orders",
                    f"{orders} must sum to nfe - 1 = {intervals} with each in [1, {self.order}]",
                )
            if singular_start and orders and orders[0] != 1:
                raise ArgumentError(
                    "orders", "the first step starts at zero SNR and must be order 1"
                )
            return orders
        plan = []
        if singular_start and intervals:
            plan.append(1)
            intervals -= 1
        full, rest = divmod(intervals, self.order)
        return plan + ([rest] if rest else []) + [self.order] * full

    @abstractmethod
    def stage(self, grid: Grid, a: int, k: int, j: int, sources: Sequence[int]) -> Step:
        """(scale, terms) of the state at grid point a + j (1 <= j <= k) of a step of order
        k starting at point a; ``sources[m]`` is the evaluation at point a + m, m < j."""

    def compile(self, grid: Grid, nfe: int) -> Program:
        b = ProgramBuilder()
        coef = self.coefficient_grid(grid)
        scratch = b.register()
        a = 0
        for k in self.plan_orders(len(grid) - 1, self.singular(grid.schedule, grid[0])):
            sources = [b.evaluate(0, grid[a], a)]
            for j in range(1, k):
                b.combine(scratch, 0, *self.stage(coef, a, k, j, sources))
                sources.append(b.evaluate(scratch, grid[a + j], a + j))
            if k == 1 and self.singular(grid.schedule, grid[a]):
                scale, terms = ddim_step(coef[a], coef[a + 1], sources[0])
            else:
                scale, terms = self.stage(coef, a, k, k, sources)
            b.combine(0, 0, scale, terms, lands=a + k)
            a += k
        return b.build(b.evaluate(0, grid[-1], len(grid) - 1))
