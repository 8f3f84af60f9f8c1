"""``fewstep.tune``: calibrate a sampler to a model and a budget of model calls.

Stages, each keeping the best calibration loss seen so far (the plain solver on the default
grid is the first candidate, so tuning never makes the calibration loss worse):

1. grid: the default grid of ``solver="auto"``, and a grid chosen by dynamic programming
   on the teacher trajectory (GITS / optimal stepsize distillation), each with a model call
   first and with the analytic first step (a Gaussian fitted to the teacher's end points,
   per class for a class-conditional model, in place of the first call: one more
   evaluation for the same budget);
2. solver and per-step orders: a few solvers, then each step's order, greedily (as S^3 does);
3. gradient: times and per-step coefficient corrections through the sampler (bespoke
   solvers, learnable sampler distillation, DC-Solver's compensation), started from the
   searched sampler and from the plain default of its first step (where those are the same
   sampler, from that first step's best candidate that is another sampler: a descent's end
   is chaotic, so two descents kept by their loss land in a poor basin far less often),
   screened where they fit every noise at each step: every descent runs ``SCREEN`` of its
   steps, and only the ``KEEP`` with the lowest held-out error there run to the end
   (successive halving: the descents are most of the tuning time); where they draw
   minibatches, all run to the end instead, and the start whose descent ended with the
   lowest calibration loss descends again on other draws (``DRAWS`` descents from it);
4. finish: the result refitted as a combination of the last state and every evaluation's
   data prediction (a convex fit, fewstep.tuner.finish), where it lowers the held-out error.

Stages 2 and 3 run for each first step whose best stage-1 candidate is within
``FAMILY_MARGIN`` of the best: on a network the analytic step can lose unrefined and win
once refined.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import defaults
from ..analytic import GaussianData
from ..errors import ArgumentError
from ..generation.spec import check_count
from ..model import Model
from ..program import Combine
from ..sampling import plan
from ..solvers import get_solver
from ..spacing import Times
from .config import Correction, SamplerConfig
from .finish import fit_finish
from .gradient import Descent, check_batch_size, program_errors
from .grid import dp_grid, step_costs
from .teacher import Teacher, TeacherCache

METHODS = ("grid", "orders", "coefficients", "full")
#: solvers the order search starts from (those that take per-step ``orders``)
CANDIDATES = [("unipc", {"order": 3}), ("unipc", {"order": 2}), ("dpmpp_3m", {}), ("dpmpp_2m", {})]
#: a first step (model call or analytic) is searched and refined when its best candidate's
#: calibration loss is within this factor of the best of all candidates
FAMILY_MARGIN = 1.3
#: learning rates of the second descent from a start that has no other candidate to pair
#: with (method "coefficients"): the default rates can leap from a good basin into a worse
#: one early on (the fitted mean is carried by the few samples that cross to another mode)
CAUTIOUS = {"lr_times": 3e-3, "lr_coefficients": 1e-3}
#: stage 3 screens its descents (successive halving): each runs this fraction of its steps,
#: then only the ``KEEP`` with the lowest held-out error so far run on to the end. Descents
#: that fit every noise at each step are smooth, and the leader a quarter of the way was the
#: one kept at the end on the digits models (README); minibatch descents are not screened:
#: their held-out error jumps from draw to draw, and the leader changes late
SCREEN = 0.25
KEEP = 1
#: minibatch descents from the leading start: which minibatches a descent draws can decide
#: the basin it ends in, and the lowest calibration loss of three mostly picks a better one
#: (gmm-vp at 6 calls over four row orders: held-out mean 3.38e-3 with one, 2.76e-3 with
#: three; ``bench/tuner_spread.py``). Only the start whose first descent ended lowest draws
#: again (three from every start, efa38d1 to c13c627, gave 2.75e-3 for twice the descents
#: where four starts are refined)
DRAWS = 3

#: the teachers of this process, shared by every ``tune`` call
TEACHERS = TeacherCache()


def _check_calibration(calibration) -> None:
    """Calibration noises are a batch: a tensor with a leading batch axis."""
    if not isinstance(calibration, Tensor) or calibration.ndim < 2:
        raise ArgumentError("calibration", "give the calibration noises as a (batch, ...) tensor")


def teacher_for(
    model: Model, noise: Tensor, cond=None, uncond=None, batch_size: int | None = None
) -> Teacher:
    """The teacher for these calibration inputs, computed once per model (network, guidance,
    schedule) and inputs (noises and conditions, by content) and cached in memory so that
    tuning several budgets reuses it (``tune`` swaps in a given target); ``batch_size``
    bounds the noises solved at once."""
    key = TEACHERS.key(model, noise, cond, uncond)
    return TEACHERS.get(
        key,
        lambda: Teacher.solve(model, noise, cond=cond, uncond=uncond, batch_size=batch_size),
    )


def calibration_loss(
    model: Model,
    teacher: Teacher,
    solver: str,
    options: dict,
    nfe: int,
    times,
    gaussian: GaussianData | None = None,
    batch_size: int | None = None,
) -> float:
    """Mean per-sample RMSE of the plain solver on these times against the teacher's target
    (with ``gaussian``, its first evaluation is the analytic first step)."""
    try:
        program = _config(model, solver, options, nfe, times, gaussian).program(model)
    except ArgumentError:
        return float("inf")
    return program_loss(model, teacher, program, batch_size)


def _config(
    model: Model,
    solver: str,
    options: dict,
    nfe: int,
    times,
    gaussian: GaussianData | None,
    corrections: list | None = None,
    call_times: list[float] | None = None,
) -> SamplerConfig:
    """The configuration of a candidate sampler (no metadata)."""
    return SamplerConfig(
        solver,
        options,
        list(times),
        nfe,
        model.schedule.config(),
        model.prediction,
        corrections or [],
        call_times,
        None if gaussian is None else gaussian.record(),
    )


def config_loss(
    model: Model, teacher: Teacher, config: SamplerConfig, batch_size: int | None = None
) -> float:
    """Mean per-sample RMSE of a configured sampler against the teacher's target."""
    return program_loss(model, teacher, config.program(model), batch_size)


def program_loss(model: Model, teacher: Teacher, program, batch_size: int | None = None) -> float:
    """Mean per-sample RMSE of a compiled program from the teacher's noises (run in chunks
    of at most ``batch_size``)."""
    inputs = (teacher.start(model.schedule), teacher.target, teacher.cond, teacher.uncond)
    with torch.no_grad():
        return float(program_errors(model, program, inputs, batch_size).mean())


def tune(
    model: Model,
    nfe: int = 5,
    *,
    calibration: Tensor,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    solver: str | None = None,
    method: str = "full",
    teacher: Teacher | None = None,
    target: Tensor | None = None,
    iterations: int = 600,
    analytic: bool = True,
    batch_size: int | None = None,
    recompute: bool = False,
    draws: int = DRAWS,
    progress: bool = True,
) -> SamplerConfig:
    """A sampler configuration for ``model`` at ``nfe`` model calls, fitted on the
    ``calibration`` noises (and ``cond``/``uncond`` inputs).

    Args:
        calibration: noises (batch, ...); where samples can end at different modes,
            thousands, so that the rare ones a cheap sampler sends to the wrong mode are
            among them (the descent draws minibatches, so a step costs the same; the
            teacher's solve and each candidate's score grow with their number).
        solver: fix the base solver (a name with per-step ``orders``: unipc, dpmpp_2m,
            dpmpp_3m); None searches a few.
        method: "grid" (times only), "orders" (grid and per-step orders), "coefficients"
            (coefficients on the default grid) or "full" (all of them).
        teacher: a precomputed ``Teacher`` (otherwise computed and cached per noises).
        target: the end points to fit instead of the teacher's (e.g. exact ODE solutions).
        iterations: gradient steps of a descent run to the end (``SCREEN`` of them for one
            that the screen drops).
        analytic: with method "full", also try the analytic first step (a Gaussian fitted
            to the teacher's end points stands in for the first model call, so the solver
            gets one more evaluation; its mean is per class when ``cond`` holds one integer
            label per sample); False for samplers a diffusers pipeline runs, which calls
            the model on its initial latents first.
        batch_size: the most noises the teacher's solve and a gradient descent's
            differentiated run hold at once (a descent keeps every network call's
            activations for its backward pass: bound it for large models; the descent then
            accumulates each step's gradient over chunks, to the same loss); None: all.
        recompute: a descent runs each network call again in its backward pass instead of
            keeping its activations (activation checkpointing): it then holds one call's
            activations instead of nfe calls', for one more network call per call; the same
            descent. For networks whose activations fill memory even at a small batch_size.
        draws: where descents draw minibatches (more than ``FIT_BATCH`` fitting noises),
            the start whose descent ends with the lowest calibration loss descends this
            many times in all, with other draws, and the lowest calibration loss is kept
            (``DRAWS``): which minibatches a descent draws can decide which basin it ends in
            (gmm-vp at 6 calls: held-out 2.7e-3 to 4.9e-3 with one draw,
            ``bench/tuner_spread.py``), and the calibration loss mostly ranks those ends as
            held-out noises do. Each draw costs a descent's model calls; fewer fitting
            noises run one descent per start whatever this is.
    """
    if method not in METHODS:
        raise ArgumentError("method", f"unknown {method!r}", f"one of {METHODS}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ArgumentError("nfe", f"tuning needs at least 2 model calls, got {nfe!r}")
    _check_calibration(calibration)
    check_batch_size(batch_size)
    check_count("draws", draws)
    if torch.is_inference_mode_enabled():
        raise ArgumentError(
            "torch.inference_mode",
            "tuning differentiates through the sampler, which inference mode forbids",
            "call fewstep.tune outside torch.inference_mode(); torch.no_grad() is fine",
        )
    start_time = time.perf_counter()
    cached = teacher is not None or TEACHERS.key(model, calibration, cond, uncond) in TEACHERS
    teacher = teacher or teacher_for(model, calibration, cond, uncond, batch_size)
    calls_before = model.nfe  # after the teacher: its calls are reported apart
    if target is not None:
        teacher = replace(teacher, target=target)
    schedule = model.schedule
    bar = tqdm(total=0, desc=f"tuning nfe={nfe}", disable=not progress, leave=False)

    # 1. candidate samplers: solvers on the calibrated default grid and on the teacher's
    # dynamic programme, each with a model call first and with the analytic first step
    first_steps = [None]
    if analytic and method == "full":
        first_steps.append(_fit_gaussian(teacher))
    costs = step_costs(model, teacher, batch_size) if method in ("grid", "orders", "full") else None
    families = [
        _score_candidates(model, teacher, nfe, method, solver, gaussian, costs, batch_size)
        for gaussian in first_steps
    ]
    plain = families[0][0]  # the plain default: the starting point
    leader = min(c.loss for family in families for c in family)
    best, corrections, call_times = plain, [], None
    # 2 for each first step whose best candidate is close to the leader (refinement can
    # reorder them: on a network the analytic step may only win once refined), then 3 from
    # two starts of each
    starts = []
    for family in families:
        searched = min(family, key=lambda c: c.loss)
        if searched.loss > FAMILY_MARGIN * leader:
            continue
        if method in ("orders", "full"):
            searched = _search_orders(model, teacher, searched, nfe, batch_size)
        if searched.loss < best.loss:
            best = searched
        if method in ("grid", "coefficients", "full"):
            starts += _starts(model, searched, family, nfe)
    for start, loss, times, start_corrections, start_calls in _descend(
        model, teacher, starts, nfe, method, iterations, bar, batch_size, recompute, draws
    ):
        if loss < best.loss:  # otherwise the searched sampler stands
            best = start._replace(loss=loss, times=times)
            corrections, call_times = start_corrections, start_calls
    if method in ("coefficients", "full"):
        best, corrections = _finished(
            model, teacher, best, nfe, corrections, call_times, batch_size
        )
    bar.close()
    # pin the defaults that decide the program, so a saved config outlives a default's change
    options = best.options
    resolved = get_solver(best.solver, **options).options()
    if "max_step_ratio" in resolved:
        options = {"max_step_ratio": resolved["max_step_ratio"], **options}
    gaussian = best.gaussian
    return SamplerConfig(
        solver=best.solver,
        options={k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
        times=[float(t) for t in best.times],
        nfe=nfe,
        schedule=schedule.config(),
        prediction=model.prediction,
        corrections=corrections,
        call_times=call_times,
        gaussian=None if gaussian is None else gaussian.record(),
        meta={
            "method": method,
            "grid": best.grid,
            "first_step": "model" if gaussian is None else "analytic",
            "calibration_samples": int(calibration.shape[0]),
            "calibration_rmse_start": plain.loss,
            "calibration_rmse": best.loss,
            "teacher_calls": 0 if cached else teacher.calls,
            "tuning_calls": model.nfe - calls_before,
            "seconds": time.perf_counter() - start_time,
        },
    )


def refit_first_step(
    model: Model,
    config: SamplerConfig,
    calibration: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
) -> SamplerConfig:
    """``config`` with its analytic first step's Gaussian refitted to ``model``'s samples
    from the ``calibration`` noises (the teacher's end points; per class when ``cond`` holds
    one integer label per sample): for classes the tuning calibration lacked, or after the
    model changed. Times, orders and coefficients stay; it costs one teacher solve, no
    tuning."""
    config.check(model)
    if config.gaussian is None:
        raise ArgumentError(
            "config", "has no analytic first step to refit", "sample with it as it is"
        )
    _check_calibration(calibration)
    teacher = teacher_for(model, calibration, cond, uncond)
    meta = {**config.meta, "first_step_refit_samples": int(calibration.shape[0])}
    return replace(config, gaussian=_fit_gaussian(teacher).record(), meta=meta)


class Candidate(NamedTuple):
    """A sampler the search considers, with its calibration loss."""

    loss: float
    solver: str
    options: dict
    times: list[float]
    grid: str  # "default" or "dp"
    gaussian: GaussianData | None  # the analytic first step, if any


def _fit_gaussian(teacher: Teacher) -> GaussianData:
    """The analytic first step's Gaussian, fitted to the teacher's end points: per class
    when the condition holds one integer label per sample (a class-conditional model)."""
    label = teacher.label()
    if label is None:
        return GaussianData.fit(teacher.target)
    key, labels = label
    return GaussianData.fit(teacher.target, labels, key)


def _starts(
    model: Model, searched: Candidate, family: list[Candidate], nfe: int
) -> list[tuple[Candidate, dict]]:
    """The two starts of stage 3 for one first step, with their learning rates (other than
    ``Descent``'s defaults): the searched sampler and the plain default of that first step
    (``family[0]``; the mean error is carried by the few samples a sampler sends to another
    mode, and a start that trades typical accuracy for fewer of them can trap the descent).
    Where those are the same sampler, the second start is the family's best candidate that
    is another: a descent's end is chaotic (float rounding alone moves digits-unet at
    guidance 2 between basins a third apart), and two descents from different starts rarely
    both end in a poor one. Without another candidate, the second descent repeats the first
    at ``CAUTIOUS`` learning rates."""
    here = _base_program(model, searched, nfe)
    others = [c for c in family if _base_program(model, c, nfe) != here]
    if not others:
        return [(searched, {}), (searched, CAUTIOUS)]
    # the plain default where it is another sampler, else the best other
    second = others[0] if others[0] is family[0] else min(others, key=lambda c: c.loss)
    return [(searched, {}), (second, {})]


def _descend(
    model: Model,
    teacher: Teacher,
    starts: list[tuple[Candidate, dict]],
    nfe: int,
    method: str,
    iterations: int,
    bar,
    batch_size: int | None = None,
    recompute: bool = False,
    draws: int = 1,
) -> list[tuple[Candidate, float, list[float], list, list[float] | None]]:
    """Stage 3. Descents that fit every noise are screened (successive halving): one from
    each start runs ``SCREEN`` of its steps, then the ``KEEP`` with the lowest held-out error
    so far run to the end. Minibatch descents all run to the end, one from each start (draw
    seed 0), then ``draws - 1`` more (seeds 1, 2, ...) from the start whose descent ended
    with the lowest calibration loss. (start, calibration loss, times, corrections, call
    times) of each finished descent."""

    def begin(start, rates, seed=0):
        return _descent(
            model, teacher, start, nfe, method, iterations, bar, rates, batch_size, recompute, seed
        )

    def finish(descent, start):
        descent.advance(iterations)
        times, corrections, calls, _, _ = descent.result()
        config = _config(
            model, start.solver, start.options, nfe, times, start.gaussian, corrections, calls
        )
        return start, config_loss(model, teacher, config, batch_size), times, corrections, calls

    descents = [begin(start, rates) for start, rates in starts]
    if any(d.minibatched for d in descents):
        bar.total += iterations * (len(descents) + draws - 1)
        finished = [finish(d, start) for d, (start, _) in zip(descents, starts, strict=True)]
        lead = min(range(len(finished)), key=lambda i: finished[i][1])
        start, rates = starts[lead]
        return finished + [finish(begin(start, rates, seed), start) for seed in range(1, draws)]
    screen = min(iterations, math.ceil(SCREEN * iterations))
    kept = min(KEEP, len(descents))
    bar.total += screen * len(descents) + (iterations - screen) * kept
    for descent in descents:
        descent.advance(screen)
    ranked = sorted(range(len(descents)), key=lambda i: descents[i].held_out)
    return [finish(descents[i], starts[i][0]) for i in sorted(ranked[:kept])]


def _finished(
    model: Model,
    teacher: Teacher,
    best: Candidate,
    nfe: int,
    corrections: list[Correction],
    call_times: list[float] | None,
    batch_size: int | None = None,
) -> tuple[Candidate, list[Correction]]:
    """The finish stage: the best sampler with a finish (``fit_finish``) where that lowers the
    held-out quarter's error and the calibration loss; (candidate, corrections)."""
    config = _config(
        model, best.solver, best.options, nfe, best.times, best.gaussian, corrections, call_times
    )
    program = config.program(model)
    finish, _, _ = fit_finish(model, program, teacher, batch_size=batch_size)
    if finish is None:
        return best, corrections
    combinations = sum(isinstance(ins, Combine) for ins in program.instructions)
    finished = [*(corrections or [Correction()] * combinations), finish]
    loss = config_loss(model, teacher, replace(config, corrections=finished), batch_size)
    if not loss < best.loss:
        return best, corrections
    return best._replace(loss=loss), finished


def _base_program(model: Model, candidate: Candidate, nfe: int) -> tuple:
    """The instructions of a candidate's plain program (before any analytic first step):
    equal for the same sampler however its options spell it (e.g. unipc order 2 and unipc
    with orders [2, 2, ...])."""
    evaluations = nfe + (candidate.gaussian is not None)
    times = Times(tuple(candidate.times))
    return plan(model, candidate.solver, evaluations, times, **candidate.options)[2].instructions


def _score_candidates(
    model: Model,
    teacher: Teacher,
    nfe: int,
    method: str,
    solver: str | None,
    gaussian: GaussianData | None,
    costs: tuple[Tensor, Tensor] | None,
    batch_size: int | None = None,
) -> list[Candidate]:
    """The candidate solvers on the default grid and, given the teacher's step ``costs``,
    the dynamic-programming grid, scored; the first is the plain default (``solver="auto"``
    on its grid)."""
    schedule = model.schedule
    evaluations = nfe + (gaussian is not None)
    auto_name, auto_options, auto_spacing = defaults.auto(schedule, evaluations)
    candidates = [(auto_name, dict(auto_options))]
    if solver is not None:
        candidates = [(solver, {})]
    else:
        candidates += [c for c in CANDIDATES if c != (auto_name, auto_options)]
    n_points = get_solver(candidates[0][0], **candidates[0][1]).grid_size(evaluations, False)
    grids = {"default": auto_spacing.times(schedule, n_points).tolist()}
    if costs is not None:
        grids["dp"] = dp_grid(*costs, n_points, teacher.times)
    scored = []
    for name, options in candidates[: 1 if method in ("grid", "coefficients") else None]:
        for label, times in grids.items():
            if get_solver(name, **options).grid_size(evaluations, False) != len(times):
                continue
            loss = calibration_loss(model, teacher, name, options, nfe, times, gaussian, batch_size)
            scored.append(Candidate(loss, name, options, times, label, gaussian))
    return scored


def _search_orders(
    model: Model, teacher: Teacher, best: Candidate, nfe: int, batch_size: int | None = None
) -> Candidate:
    """Each step's order, greedily (two sweeps), for a solver that takes per-step orders.
    A trial that compiles to the current sampler (an order above the history a step has,
    as on a multistep's first step) is skipped: it would cost a calibration run and tie."""
    solver = get_solver(best.solver, **best.options)
    if "orders" not in solver.options():
        return best
    orders = [solver.order] * (len(best.times) - 1)
    current = _base_program(model, best, nfe)
    for _ in range(2):
        improved = False
        for i in range(len(orders)):
            for k in range(1, solver.order + 1):
                trial = [*orders[:i], k, *orders[i + 1 :]]
                candidate = best._replace(options={**best.options, "orders": trial})
                program = _base_program(model, candidate, nfe)
                if program == current:
                    continue
                value = calibration_loss(
                    model,
                    teacher,
                    best.solver,
                    candidate.options,
                    nfe,
                    best.times,
                    best.gaussian,
                    batch_size,
                )
                if value < best.loss:
                    best, orders, improved = candidate._replace(loss=value), trial, True
                    current = program
        if not improved:
            break
    return best._replace(options={**best.options, "orders": orders})


def _descent(
    model: Model,
    teacher: Teacher,
    start: Candidate,
    nfe: int,
    method: str,
    iterations: int,
    bar,
    rates: dict,
    batch_size: int | None = None,
    recompute: bool = False,
    draw_seed: int = 0,
) -> Descent:
    """A gradient descent from ``start`` that learns what ``method`` tunes (``rates``:
    learning rates other than ``Descent``'s defaults)."""
    return Descent(
        model,
        get_solver(start.solver, **start.options),
        nfe,
        start.times,
        teacher,
        iterations=iterations,
        learn_times=method != "coefficients",
        learn_coefficients=method != "grid",
        learn_call_times=method == "full",
        gaussian=start.gaussian,
        progress=bar,
        batch_size=batch_size,
        recompute=recompute,
        draw_seed=draw_seed,
        **rates,
    )
