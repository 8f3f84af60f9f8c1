"""Restart sampling (Xu et al., 2023): ODE steps, with K restarts of an interval.

The main ODE runs down to the restart interval's low noise level; then K times the state is
noised forward to the high level (x_hi = (alpha_hi/alpha_lo) x_lo + sqrt(sigma_hi^2 -
(alpha_hi/alpha_lo)^2 sigma_lo^2) z, the exact forward process) and the ODE is solved back
down with ``inner_nfe`` model calls on a log-SNR-uniform grid; then the main ODE finishes.
The deterministic solver is any of the zoo, and every model call counts towards the nfe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError
from ..model import points
from ..program import ProgramBuilder
from ..schedules import NoiseSchedule
from .base import Grid, Solver, classical_tau

Interval = tuple[float, float, int, int]


def _logsnr_times(schedule: NoiseSchedule, t_hi: float, t_lo: float, n: int) -> list[float]:
    lam_hi, lam_lo = float(schedule.lam(t_hi)), float(schedule.lam(t_lo))
    t = schedule.t_of_lam([lam_hi + (lam_lo - lam_hi) * i / (n - 1) for i in range(n)]).tolist()
    t[0], t[-1] = t_hi, t_lo
    return t


class Restart(Solver):
    """Restart sampling on any deterministic solver ``base`` (default Heun, as in the paper).

    ``intervals``: (sigma_lo, sigma_hi, K, inner_nfe) tuples in noise levels sigma/alpha:
    restart K times from sigma_lo up to sigma_hi, each pass solving back down with inner_nfe
    model calls, the last of which (at sigma_lo) is shared with what follows, so a pass
    costs inner_nfe - 1 calls. The main ODE gets the rest of the budget.
    """

    name = "restart"
    stochastic = True

    def __init__(
        self,
        base: str | Solver = "heun",
        intervals: Sequence[Sequence[float]] = ((0.1, 2.0, 2, 11),),
        base_options: dict[str, Any] | None = None,
        brownian: bool = False,
    ):
        from . import get_solver

        self.base = get_solver(base, **(base_options or {}))
        if self.base.stochastic or self.base.adaptive:
            raise ArgumentError("base", "restart needs a deterministic, fixed-step solver")
        self.intervals: list[Interval] = []
        for row in intervals:
            lo, hi, k, inner = row
            if not (0 < lo < hi and int(k) >= 0 and int(inner) >= 2):
                raise ArgumentError(
                    "intervals", f"need 0 < sigma_lo < sigma_hi, K >= 0, inner_nfe >= 2; got {row}"
                )
            self.intervals.append((float(lo), float(hi), int(k), int(inner)))
        self.brownian = bool(brownian)
        self.order = self.base.order

    def options(self) -> dict[str, Any]:
        return {
            "base": self.base.name,
            "base_options": self.base.options(),
            "intervals": self.intervals,
            "brownian": self.brownian,
        }

    def _cost(self) -> int:
        return sum(k * (inner - 1) for _, _, k, inner in self.intervals)

    def grid_size(self, nfe: int, singular_start: bool) -> int:
        main = nfe - self._cost()
        if main < 2:
            raise ArgumentError(
                "nfe",
                f"the restarts take {self._cost()} model calls, nfe={nfe} leaves too few "
                "for the main ODE",
                "raise nfe or restart less",
            )
        return self.base.grid_size(main, singular_start)

    def compile(self, grid: Grid, nfe: int):
        schedule = grid.schedule
        times = [p.t for p in grid.points]
        at: dict[int, Interval] = {}  # main grid index -> the interval restarting there
        for interval in self.intervals:
            t_lo = float(schedule.t_of_edm_sigma(interval[0]))
            free = [j for j in range(1, len(times) - 1) if j not in at]
            if not free:
                raise ArgumentError("intervals", "the main grid is too short for the restarts")
            j = min(free, key=lambda j: abs(times[j] - t_lo))
            times[j], at[j] = t_lo, interval
        if any(later >= earlier for earlier, later in itertools.pairwise(times)):
            raise ArgumentError(
                "intervals", "restart levels collide on this grid", "use more steps"
            )
        main = Grid.from_times(schedule, times)
        top = float(schedule.edm_sigma(schedule.t_max))
        b = ProgramBuilder()
        bounds = [0, *sorted(at), len(times) - 1]
        remaining = nfe - self._cost()
        output = -1
        for start, end in itertools.pairwise(bounds):
            segment = Grid(schedule, main.points[start : end + 1])
            last = end == len(times) - 1
            seg_nfe = remaining if last else self.base.nfe_for_points(len(segment))
            output = b.inline(
                self.base.compile(segment, seg_nfe), land_offset=start, keep_output=last
            )
            remaining -= seg_nfe - 1
            if last:
                break
            _, hi, k, inner = at[end]
            p_lo = main[end]
            p_hi = points(schedule, schedule.t_of_edm_sigma(min(hi, top)))[0]
            ratio = p_hi.alpha / p_lo.alpha
            std = math.sqrt(max(0.0, p_hi.sigma**2 - (ratio * p_lo.sigma) ** 2))
            inner_grid = Grid.from_times(
                schedule, _logsnr_times(schedule, p_hi.t, p_lo.t, self.base.grid_size(inner, False))
            )
            inner_program = self.base.compile(inner_grid, inner)
            for _ in range(k):
                draw = b.draw(classical_tau(schedule, p_lo), classical_tau(schedule, p_hi))
                b.combine(0, 0, ratio, [], draws=[(draw, std)])
                b.inline(inner_program, land_offset=None)
        program = b.build(output)
        if program.nfe != nfe:
            raise ArgumentError(
                "nfe",
                f"restart cannot split nfe={nfe} exactly with {self.base.name!r}",
                "try one call more or less",
            )
        return program
