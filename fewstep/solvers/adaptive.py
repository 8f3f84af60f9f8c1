"""Adaptive step size: DPM-Solver-12 and DPM-Solver-23 (Lu et al., 2022, section 3.3).

Each attempt takes an order-k step and an embedded order-(k-1) step from the same model
evaluations (DPM-Solver-3 with r1 = 1/3, r2 = 2/3 against DPM-Solver-2 with r1 = 1/3; or
DPM-Solver-2 against DDIM), measures their difference in a mixed absolute/relative norm,
accepts when it is at most 1 and rescales the log-SNR step by 0.9 E^{-1/k}. The stage
rules are the singlestep solver's: nothing here re-derives a coefficient. The step size is
shared by the batch, so each attempt reads one scalar back from the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..model import Point, Prediction, points
from ..program import combine
from ..schedules import NoiseSchedule
from .base import Grid, Solver, check_order, ddim_step
from .exponential import DPMSolverSinglestep

Evaluate = Callable[[Tensor, Point, int], Prediction]

#: where a run starting at zero SNR (rectified flow at t = 1) first lands, by one exact-in-
#: the-limit DDIM step: sigma / alpha = 80, the largest noise level of EDM.
ZERO_SNR_EXIT_SIGMA = 80.0


class DPMSolverAdaptive(Solver):
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with a tolerance instead of an NFE."""

    name = "dpm_adaptive"
    adaptive = True

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        safety: float = 0.9,
        max_nfe: int = 10_000,
    ):
        self.order = check_order(order, 2, 3)
        if not (rtol > 0 and atol > 0 and h_init > 0 and 0 < safety <= 1):
            raise ArgumentError("rtol", "rtol, atol and h_init must be positive, 0 < safety <= 1")
        self.rtol, self.atol, self.h_init, self.safety = (
            float(rtol),
            float(atol),
            float(h_init),
            float(safety),
        )
        self.max_nfe = int(max_nfe)
        self._rule = DPMSolverSinglestep(order=3, form="noise", solver_type="paper")

    def options(self) -> dict[str, Any]:
        return {"order": self.order, "rtol": self.rtol, "atol": self.atol, "h_init": self.h_init}

    def compile(self, grid: Grid, nfe: int):
        raise ArgumentError("solver", "'dpm_adaptive' chooses its own steps and cannot be compiled")

    def _attempt(self, grid: Grid, x: Tensor, pred0: Prediction, evaluate: Evaluate, step: int):
        """(low, high, evaluations made) for the step grid[0] -> grid[-1]."""
        results = [pred0]
        last = len(grid) - 1

        def stage(k: int, j: int, sources: list[int]) -> Tensor:
            scale, terms = self._rule.stage(grid, 0, k, j, sources)
            return combine(x, scale, terms, results)

        if self.order == 2:  # grid: start, midpoint (r = 1/2), end; the low solution is DDIM
            results.append(evaluate(stage(2, 1, [0]), grid[1], step))
            low = combine(x, *ddim_step(grid[0], grid[last], 0), results)
            return low, stage(2, 2, [0, 1]), 1
        # grid: start, r1 = 1/3, r2 = 2/3, end; the low solution is DPM-Solver-2 with r1 = 1/3
        results.append(evaluate(stage(3, 1, [0]), grid[1], step))
        high_stage = stage(3, 2, [0, 1])
        low_grid = Grid(grid.schedule, (grid[0], grid[1], grid[last]))
        scale, terms = DPMSolverSinglestep(order=2, form="noise").stage(low_grid, 0, 2, 2, [0, 1])
        low = combine(x, scale, terms, results)
        results.append(evaluate(high_stage, grid[2], step))
        return low, stage(3, 3, [0, 1, 2]), 2

    def integrate(
        self,
        evaluate: Evaluate,
        x: Tensor,
        schedule: NoiseSchedule,
        start: Point,
        end: Point,
        on_land: Callable[[float, Tensor], None] | None = None,
    ):
        """Integrate from ``start`` to ``end``; returns (data prediction at the end, NFE).
        ``on_land(t, state)`` sees every accepted state."""
        nfe, step = 0, 0
        if start.alpha == 0.0:
            pred = evaluate(x, start, step)
            nfe, step = nfe + 1, step + 1
            exit_lam = min(-math.log(ZERO_SNR_EXIT_SIGMA), end.lam - 1.0)
            nxt = points(schedule, schedule.t_of_lam(exit_lam))[0]
            scale, terms = ddim_step(start, nxt, 0)
            x, start = combine(x, scale, terms, [pred]), nxt
        lam, h = start.lam, self.h_init
        current, x_prev = start, x
        stages = [1 / 2] if self.order == 2 else [1 / 3, 2 / 3]
        pred = None
        while lam < end.lam - 1e-9:
            if nfe > self.max_nfe:
                raise ArgumentError(
                    "max_nfe",
                    f"the tolerance needed more than {self.max_nfe} model calls",
                    "loosen rtol/atol",
                )
            if pred is None:
                pred = evaluate(x, current, step)
                nfe += 1
            h = min(h, end.lam - lam)
            lams = [lam + r * h for r in stages] + [lam + h]
            targets = points(
                schedule, schedule.t_of_lam(torch.tensor(lams[:-1], dtype=torch.float64))
            )
            final = (
                end
                if lams[-1] >= end.lam - 1e-12
                else points(schedule, schedule.t_of_lam(lams[-1]))[0]
            )
            grid = Grid(schedule, (current, *targets, final))
            low, high, made = self._attempt(grid, x, pred, evaluate, step)
            nfe += made
            delta = torch.maximum(
                torch.full_like(low, self.atol), self.rtol * torch.maximum(low.abs(), x_prev.abs())
            )
            error = float(torch.linalg.vector_norm((low - high) / delta) / math.sqrt(low.numel()))
            factor = self.safety * max(error, 1e-10) ** (-1.0 / self.order)
            if error <= 1.0:
                x_prev, x, lam, current, pred, step = low, high, lams[-1], final, None, step + 1
                if on_land is not None:
                    on_land(current.t, x)
            h = h * min(5.0, max(0.2, factor))
        out = evaluate(x, end, step)
        return out.data, nfe + 1
