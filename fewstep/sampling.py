"""The sampling entry point (layer 5): solver x spacing x model -> samples."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from . import defaults
from .errors import ArgumentError, FewstepError, NonFiniteError
from .model import Model, Point, Prediction, points
from .noise import BrownianNoise, IndependentNoise, sample_seeds
from .program import Program
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


DEFAULT_NFE = 10


def resolve(
    model: Model,
    solver: str | Solver = "auto",
    spacing: str | Spacing | Sequence[float] | Tensor | np.ndarray | None = None,
    nfe: int = DEFAULT_NFE,
    **solver_options: Any,
) -> tuple[Solver, Spacing]:
    """The solver and spacing that ``sample`` would use (``"auto"`` resolved per schedule
    family and nfe, see ``fewstep.defaults``)."""
    if isinstance(solver, str) and solver == "auto":
        name, options, auto_spacing = defaults.auto(model.schedule, nfe)
        solver = get_solver(name, **{**options, **solver_options})
        spacing = auto_spacing if spacing is None else spacing
    else:
        solver = get_solver(solver, **solver_options)
    return solver, resolve_spacing(spacing, model.schedule)


_PLANS: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 64
_PLANS_LOCK = threading.Lock()


def plan(
    model: Model,
    solver: str | Solver = "auto",
    nfe: int = DEFAULT_NFE,
    spacing: str | Spacing | Sequence[float] | Tensor | np.ndarray | None = None,
    **solver_options: Any,
) -> tuple[Solver, Grid, Program]:
    """The solver, grid and compiled program that ``sample`` would run (no model calls).
    Plans are pure functions of (schedule, solver settings, spacing, nfe) and are cached, so
    repeated sampling with one configuration compiles once."""
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ArgumentError("nfe", f"must be a positive integer, got {nfe!r}")
    nfe = int(nfe)
    solver, sp = resolve(model, solver, spacing, nfe, **solver_options)
    if solver.adaptive:
        raise ArgumentError("solver", f"{solver.name!r} is adaptive and has no fixed plan")
    key = (model.schedule, type(solver), solver.name, repr(solver.options()), sp, nfe)
    with _PLANS_LOCK:
        cached = _PLANS.get(key)
        if cached is not None:
            _PLANS.move_to_end(key)
            return cached
    result = _compile_plan(model, solver, sp, nfe)
    with _PLANS_LOCK:  # threads sampling at once share the cache
        _PLANS[key] = result
        if len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return result


def _compile_plan(
    model: Model, solver: Solver, sp: Spacing, nfe: int
) -> tuple[Solver, Grid, Program]:
    schedule = model.schedule
    n = solver.grid_size(nfe, singular_start=False)
    times = sp.times(schedule, n)
    if solver.singular(schedule, points(schedule, times[:1])[0]):
        n_singular = solver.grid_size(nfe, singular_start=True)
        if n_singular != n:
            n, times = n_singular, sp.times(schedule, n_singular)
    check_grid(schedule, times)
    grid = Grid.from_times(schedule, times)
    model.check_start(grid[0])
    program = solver.compile(grid, nfe)
    if program.nfe != nfe:
        raise FewstepError(f"internal: {solver!r} compiled {program.nfe} model calls for nfe={nfe}")
    return solver, grid, program


class _FiniteGuard:
    """Stops sampling at the first non-finite model output. On the CPU it checks at once;
    on accelerators it keeps device-side flags and syncs once at the end, so the loop has
    no host-device synchronisation. It counts this run's model calls (``Model.nfe`` counts
    every run's, threads included)."""

    def __init__(self, device: torch.device):
        self.deferred = device.type != "cpu"
        self.flags: list[tuple[Tensor, int, float]] = []
        self.calls = 0

    def check(self, pred: Prediction, step: int, t: float) -> None:
        self.calls += 1
        total = pred.data.sum()  # NaN or inf anywhere makes the sum non-finite
        if self.deferred:
            self.flags.append((torch.isfinite(total), step, t))
        elif not math.isfinite(total.item()):
            raise NonFiniteError(step, t)

    def finish(self) -> None:
        if self.deferred and self.flags:
            oks = torch.stack([ok for ok, _, _ in self.flags]).cpu()
            if not bool(oks.all()):
                _, step, t = self.flags[int((~oks).nonzero()[0])]
                raise NonFiniteError(step, t)


def _evaluator(model: Model, guard: _FiniteGuard, bar, cond, uncond, recompute: bool = False):
    model.check_mode()
    call = model.evaluate
    if recompute and torch.is_grad_enabled():
        call = partial(checkpoint, model.evaluate, use_reentrant=False)

    def evaluate(state: Tensor, point: Point, step: int) -> Prediction:
        pred = call(state, point, cond, uncond)
        guard.check(pred, step, point.t)
        bar.update()
        return pred

    return evaluate


def noise_source(
    program: Program,
    x: Tensor,
    seed: int | Sequence[int] | None,
    kind: str = "independent",
    dtype: torch.dtype = torch.float32,
):
    """The per-sample noise a stochastic program draws: independent streams (sample i's
    draw k from its seed and k) or Brownian trees over the classical noise level. Without a
    seed the base seed comes from torch's global generator (so torch.manual_seed
    reproduces a run)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seeds = sample_seeds(seed, x.shape[0])
    if kind == "brownian":
        taus = [t for d in program.draws for t in (d.tau0, d.tau1) if math.isfinite(t)]
        return BrownianNoise(seeds, x.shape, min(taus) * 0.999, max(taus) * 1.001, dtype)
    return IndependentNoise(seeds, dtype)


def run(
    model: Model,
    program: Program,
    x: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_land: Callable[[int, Tensor], None] | None = None,
    noise: Callable | None = None,
    recompute: bool = False,
) -> Tensor:
    """Run a compiled program from state x (gradients flow if enabled: the tuner uses this).
    With ``recompute`` (and gradients on) each model evaluation keeps only its inputs and is
    run again in the backward pass (activation checkpointing): the run holds one network
    call's activations at a time instead of every call's, for one more call per call."""
    guard = _FiniteGuard(x.device)
    with tqdm(total=program.nfe, disable=not progress, desc="sampling", leave=False) as bar:
        evaluate = _evaluator(model, guard, bar, cond, uncond, recompute)
        out = program.run(
            lambda state, ins: evaluate(state, ins.point, ins.step), x, on_land, noise, cond
        )
    guard.finish()
    if guard.calls != program.nfe:
        raise FewstepError(f"internal: {guard.calls} model calls made, {program.nfe} planned")
    return out


def _state_dtype(noise: Tensor) -> torch.dtype:
    return torch.float32 if noise.dtype in (torch.float16, torch.bfloat16) else noise.dtype


@torch.no_grad()
def sample(
    model: Model,
    noise: Tensor,
    *,
    solver: str | Solver = "auto",
    nfe: int | None = None,
    spacing: str | Spacing | Sequence[float] | Tensor | np.ndarray | None = None,
    seed: int | Sequence[int] | None = None,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    progress: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
    noise_dtype: torch.dtype = torch.float32,
    config: Any = None,
    **solver_options: Any,
) -> Tensor | Trajectory:
    """Integrate the probability-flow ODE from ``noise`` and return the data prediction at
    the last time of the grid (the schedule's t_min for the built-in spacings).

    Args:
        model: a ``fewstep.Model``.
        noise: standard-normal noise (batch, ...); mapped to the schedule's starting state
            (itself for VP and flow, times sigma_max for EDM).
        solver: a solver name (see ``fewstep.solvers.SOLVERS``), ``"auto"`` (the measured
            default for the schedule, see ``fewstep.defaults``) or a ``Solver``; extra
            keyword arguments configure it (e.g. ``order=3``).
        nfe: the exact number of model calls (default 10); adaptive solvers take a
            tolerance instead and report the calls they made.
        spacing: a spacing name, a ``Spacing``, or explicit native times; None takes the
            solver's (for "auto") or the schedule's default.
        seed: for solvers that draw noise: an int (sample i uses (seed, i)) or one seed per
            sample; a sample's noise never depends on the batch it is in.
        cond, uncond: keyword inputs of the model (unconditional ones for guidance).
        progress: show a progress bar over model calls.
        callback: called with a ``StepInfo`` after every step.
        return_trajectory: return a ``Trajectory`` (states at every step end) instead.
        noise_dtype: the precision stochastic solvers draw their noise in (on the CPU).
        config: a ``SamplerConfig`` from ``fewstep.tune`` (or the path of its JSON file): its
            solver, times and coefficients replace solver, nfe and spacing.
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
    if config is not None:
        from .tuner import SamplerConfig

        config = SamplerConfig.load(config) if not isinstance(config, SamplerConfig) else config
        given = [
            n
            for n, v in (
                ("solver", solver != "auto"),
                ("spacing", spacing is not None),
                ("solver options", bool(solver_options)),
            )
            if v
        ]
        if given or (nfe is not None and nfe != config.nfe):
            raise ArgumentError(
                "config",
                f"fixes the solver, nfe and times; also given: {given or ['nfe']}",
                "drop them, or sample without config",
            )
        # the solver's evaluations (the analytic first step, if any, is one without a call)
        solver, nfe, solver_options = config.solver, config.evaluations, dict(config.options)
        spacing = config.times
    solver_obj, sp = resolve(
        model, solver, spacing, DEFAULT_NFE if nfe is None else nfe, **solver_options
    )
    if seed is not None and not solver_obj.stochastic:
        raise ArgumentError(
            "seed",
            f"{solver_obj.name!r} is deterministic and draws no noise",
            "draw the starting noise with fewstep.randn(shape, seed) instead",
        )
    model.check_inputs(noise, cond, uncond)
    landed: list[tuple[float, Tensor]] = []
    count = [0]

    def on_land(t: float, state: Tensor) -> None:
        if return_trajectory:
            landed.append((t, state))
        if callback is not None:
            callback(StepInfo(count[0], t, state))
        count[0] += 1

    if solver_obj.adaptive:
        if nfe is not None:
            raise ArgumentError(
                "nfe",
                f"{solver_obj.name!r} chooses its steps from rtol/atol",
                "leave nfe unset; the calls made are reported in Trajectory.nfe and model.nfe",
            )
        schedule = model.schedule
        times = sp.times(schedule, 2)
        check_grid(schedule, times)
        start, end = points(schedule, times)
        model.check_start(start)
        x = noise.to(_state_dtype(noise)) * schedule.initial_scale(start.t)
        on_land(start.t, x)
        guard = _FiniteGuard(x.device)
        with tqdm(disable=not progress, desc="sampling", leave=False) as bar:
            evaluate = _evaluator(model, guard, bar, cond, uncond)
            samples, used = solver_obj.integrate(evaluate, x, schedule, start, end, on_land)
        guard.finish()
        if guard.calls != used:
            raise FewstepError(f"internal: {guard.calls} model calls made, {used} reported")
    else:
        _, grid, program = plan(model, solver_obj, DEFAULT_NFE if nfe is None else nfe, sp)
        if config is not None:
            program = config.program(model)
        x = noise.to(_state_dtype(noise)) * model.schedule.initial_scale(grid[0].t)
        used = program.nfe
        source = None
        if program.stochastic:
            kind = "brownian" if getattr(solver_obj, "brownian", False) else "independent"
            source = noise_source(program, x, seed, kind, noise_dtype)
        samples = run(
            model,
            program,
            x,
            cond=cond,
            uncond=uncond,
            progress=progress,
            noise=source,
            on_land=lambda index, state: on_land(grid[index].t, state),
        )
    if return_trajectory:
        times = torch.tensor([t for t, _ in landed], dtype=torch.float64)
        return Trajectory(samples, [state for _, state in landed], times, used)
    return samples
