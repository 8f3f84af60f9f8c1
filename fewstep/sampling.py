"""The sampling entry point (layer 5): solver x spacing x model -> samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import ArgumentError, FewstepError, NonFiniteError
from .model import Model, Prediction
from .program import Evaluate, Program
from .solvers import Grid, Solver, get_solver
from .spacing import Spacing, check_grid, resolve_spacing


class StepInfo(NamedTuple):
    """What a callback sees after each step: the grid index, its time and the state there."""

    index: int
    t: float
    x: Tensor


class Trajectory(NamedTuple):
    """Samples with the states at every grid point, the grid and the model calls made."""

    samples: Tensor
    states: list[Tensor]
    times: Tensor
    nfe: int


def plan(
    model: Model,
    solver: str | Solver = "ddim",
    nfe: int = 10,
    spacing: str | Spacing | Sequence[float] | Tensor | np.ndarray | None = None,
    **solver_options: Any,
) -> tuple[Solver, Grid, Program]:
    """The solver, grid and compiled program that ``sample`` would run (no model calls)."""
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ArgumentError("nfe", f"must be a positive integer, got {nfe!r}")
    nfe = int(nfe)
    solver = get_solver(solver, **solver_options)
    schedule = model.schedule
    sp = resolve_spacing(spacing, schedule)
    n = solver.grid_size(nfe, zero_snr_start=False)
    times = sp.times(schedule, n)
    if float(schedule.alpha(times[:1])) == 0.0:
        n_zero = solver.grid_size(nfe, zero_snr_start=True)
        if n_zero != n:
            n, times = n_zero, sp.times(schedule, n_zero)
    check_grid(schedule, times)
    grid = Grid.from_times(schedule, times)
    model.check_start(grid[0])
    program = solver.compile(grid)
    if program.nfe != nfe:
        raise FewstepError(f"internal: {solver!r} compiled {program.nfe} model calls for nfe={nfe}")
    return solver, grid, program


class _FiniteGuard:
    """Stops sampling at the first non-finite model output. On the CPU it checks at once;
    on accelerators it keeps device-side flags and syncs once at the end, so the loop has
    no host-device synchronisation."""

    def __init__(self, device: torch.device):
        self.deferred = device.type != "cpu"
        self.flags: list[tuple[Tensor, Evaluate]] = []

    def check(self, pred: Prediction, ins: Evaluate) -> None:
        ok = torch.isfinite(pred.data.sum())
        if self.deferred:
            self.flags.append((ok, ins))
        elif not ok:
            raise NonFiniteError(ins.step, ins.point.t)

    def finish(self) -> None:
        if self.deferred and self.flags:
            oks = torch.stack([ok for ok, _ in self.flags]).cpu()
            if not bool(oks.all()):
                ins = self.flags[int((~oks).nonzero()[0])][1]
                raise NonFiniteError(ins.step, ins.point.t)


def run(
    model: Model,
    program: Program,
    x: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_land: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run a compiled program from state x (gradients flow if enabled: the tuner uses this)."""
    guard = _FiniteGuard(x.device)
    with tqdm(total=program.nfe, disable=not progress, desc="sampling", leave=False) as bar:

        def evaluate(state: Tensor, ins: Evaluate) -> Prediction:
            pred = model.evaluate(state, ins.point, cond, uncond)
            guard.check(pred, ins)
            bar.update()
            return pred

        out = program.run(evaluate, x, on_land)
    guard.finish()
    return out


def _state_dtype(noise: Tensor) -> torch.dtype:
    return torch.float32 if noise.dtype in (torch.float16, torch.bfloat16) else noise.dtype


@torch.no_grad()
def sample(
    model: Model,
    noise: Tensor,
    *,
    solver: str | Solver = "ddim",
    nfe: int = 10,
    spacing: str | Spacing | Sequence[float] | Tensor | np.ndarray | None = None,
    seed: int | Sequence[int] | None = None,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    progress: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
    **solver_options: Any,
) -> Tensor | Trajectory:
    """Integrate the probability-flow ODE from ``noise`` and return the data prediction at
    the last time of the grid (the schedule's t_min for the built-in spacings).

    Args:
        model: a ``fewstep.Model``.
        noise: standard-normal noise (batch, ...); mapped to the schedule's starting state
            (itself for VP and flow, times sigma_max for EDM).
        solver: a solver name (see ``fewstep.solvers.SOLVERS``) or instance; extra keyword
            arguments configure it (e.g. ``order=3``).
        nfe: the exact number of model calls.
        spacing: a spacing name, a ``Spacing``, or explicit native times; None takes the
            schedule's default.
        seed: per-sample seeds for solvers that draw noise.
        cond, uncond: keyword inputs of the model (unconditional ones for guidance).
        progress: show a progress bar over model calls.
        callback: called with a ``StepInfo`` after every step.
        return_trajectory: return a ``Trajectory`` instead of the samples alone.
    """
    if not isinstance(model, Model):
        raise ArgumentError(
            "model",
            f"expected a fewstep.Model, got {type(model).__name__}",
            "wrap your network: fewstep.Model(fn, schedule, prediction=...)",
        )
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise ArgumentError("noise", "must be a floating-point tensor with a batch dimension")
    if noise.shape[0] < 1:
        raise ArgumentError("noise", "the batch is empty")
    solver_obj, grid, program = plan(model, solver, nfe, spacing, **solver_options)
    if seed is not None and not getattr(solver_obj, "stochastic", False):
        raise ArgumentError(
            "seed",
            f"{solver_obj.name!r} is deterministic and draws no noise",
            "draw the starting noise with fewstep.randn(shape, seed) instead",
        )
    model.check_inputs(noise, cond, uncond)
    x = noise.to(_state_dtype(noise)) * model.schedule.initial_scale(grid[0].t)
    times = torch.tensor([p.t for p in grid.points], dtype=torch.float64)
    states: list[Tensor] = []

    def on_land(index: int, state: Tensor) -> None:
        if return_trajectory:
            states.append(state)
        if callback is not None:
            callback(StepInfo(index, grid[index].t, state))

    calls_before = model.nfe
    samples = run(model, program, x, cond=cond, uncond=uncond, progress=progress, on_land=on_land)
    if model.nfe - calls_before != nfe:
        raise FewstepError(f"internal: {model.nfe - calls_before} model calls made for nfe={nfe}")
    if return_trajectory:
        return Trajectory(samples, states, times, nfe)
    return samples
