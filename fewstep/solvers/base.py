"""What a solver is: a compiler from a time grid to a ``Program``.

Shared here: the ``Grid`` a solver compiles, the one-call-per-point multistep skeleton, and
the first-order exponential step (DDIM) that every solver falls back to where higher order
has no meaning (a step that starts at zero SNR, a step with no usable history).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..model import Point, points
from ..program import Program, ProgramBuilder, Term
from ..schedules import NoiseSchedule


@dataclass(frozen=True)
class Grid:
    """The points a solver visits, with the schedule they come from (for intermediate
    points and for the classical integrators' space)."""

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
        """The point of the schedule at log-SNR ``lam`` (for intermediate stages)."""
        return points(self.schedule, self.schedule.t_of_lam(lam))[0]


def zero_snr(point: Point) -> bool:
    """alpha = 0: pure noise, where log-SNR is -inf and only the first-order step is defined."""
    return point.alpha == 0.0


def ddim_step(p: Point, q: Point, source: int) -> tuple[float, list[Term]]:
    """First-order exponential step in data form from p to q (DDIM, DPM-Solver-1):
    x_q = (sigma_q / sigma_p) x_p + (alpha_q - alpha_p sigma_q / sigma_p) D_p.
    Written without e^{-h} so that it is exact at alpha_p = 0."""
    ratio = q.sigma / p.sigma
    return ratio, [Term(source, data=q.alpha - p.alpha * ratio)]


class Solver(ABC):
    """Compiles a ``Grid`` into a ``Program`` whose number of model calls is exactly the nfe."""

    name: ClassVar[str]
    #: theoretical convergence order (what the order test checks)
    order: int = 1

    def grid_size(self, nfe: int, zero_snr_start: bool) -> int:
        """How many grid points the spacing must produce for ``nfe`` model calls."""
        return nfe

    @abstractmethod
    def compile(self, grid: Grid) -> Program:
        """The program for this grid."""

    def options(self) -> dict[str, Any]:
        """The solver's settings (for saved configs and reports)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class MultistepSolver(Solver):
    """One model call per grid point: at point i evaluate, then step to i + 1 with a
    combination of the current state and past evaluations; the last point's data
    prediction is the result."""

    @abstractmethod
    def step(self, grid: Grid, i: int, history: Sequence[int]) -> tuple[float, list[Term]]:
        """(scale, terms) of the step from grid[i] to grid[i + 1]; ``history[k]`` is the
        evaluation index made at grid point k (k <= i)."""

    def compile(self, grid: Grid) -> Program:
        b = ProgramBuilder()
        history: list[int] = []
        for i in range(len(grid) - 1):
            history.append(b.evaluate(0, grid[i], i))
            if zero_snr(grid[i]):
                scale, terms = ddim_step(grid[i], grid[i + 1], history[i])
            else:
                scale, terms = self.step(grid, i, history)
            b.combine(0, 0, scale, terms, lands=i + 1)
        return b.build(b.evaluate(0, grid[-1], len(grid) - 1))


def usable_history(grid: Grid, i: int, order: int) -> list[int]:
    """Grid indices i, i-1, ... (at most ``order``) whose log-SNR is finite: points at zero
    SNR carry no information about the derivative, so higher order drops them."""
    out = []
    for k in range(i, max(-1, i - order), -1):
        if not math.isfinite(grid[k].lam):
            break
        out.append(k)
    return out
