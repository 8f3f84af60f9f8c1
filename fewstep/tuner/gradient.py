"""Gradient refinement of a sampler: times and coefficients learned through the sampler.

The solver is compiled on points whose fields are 0-d tensors, so every coefficient is a
differentiable function of the times; additive corrections on every combination's scale and
data coefficients (over all earlier evaluations, as bespoke solvers and learnable sampler
distillation learn them) are parameters too. The sampler runs with autograd on, its output
is compared with the teacher's target, and Adam updates times and corrections. A quarter of
the calibration noises (every fourth, class by class for a class-conditional model) is held
out: the descent's end is kept unless an earlier snapshot (the start included) beats it there
by more than ``SIGNIFICANCE`` standard errors of the per-sample difference, so the fit stops
where it clearly overfits, but a few held-out noises do not pick the luckiest snapshot of an
early transient (digits-unet at guidance 2: a step-60 snapshot, RMSE 0.0205 against the end's
0.0191 on 300 test noises). The rest are fitted whole, or in minibatches
of ``FIT_BATCH`` where there are more: thousands of noises then cost no more per step, and
hold the rare samples a sampler sends to another mode, which a few hundred miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..analytic import GaussianData, analytic_start
from ..errors import ArgumentError, NonFiniteError
from ..model import Model, Point
from ..program import Combine, Program
from ..reference.metrics import per_sample_rmse
from ..sampling import run
from ..schedules import NoiseSchedule
from ..solvers import Grid, Solver
from ..spacing import classical_sigma, t_of_classical_sigma
from .config import Correction, corrected, shifted
from .teacher import Teacher

#: gradient steps between evaluations on the held-out calibration noises
VALIDATE_EVERY = 5
#: fitting noises per gradient step: a larger calibration set is drawn from in minibatches
#: (each step costs the same, the descent sees every noise, the held-out check uses them all)
FIT_BATCH = 384
#: standard errors of the paired per-sample difference by which an earlier snapshot must beat
#: the descent's end on the held-out noises to be kept instead
SIGNIFICANCE = 2.0


GRAD_EPS = 1e-20  # under the root of a fitted RMSE: a finite gradient at zero error


def held_out_split(batch: int, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Indices of the fit and held-out parts of the calibration batch (all of it for both
    when tiny): every fourth sample, in the order given or, with ``labels``, class by class
    (systematic stratified sampling), so every class with four or more samples is on both
    sides whether the calibration comes sorted by class or with classes in turn."""
    index = torch.arange(batch)
    if batch < 8:
        return index, index
    order = index if labels is None else torch.sort(labels.cpu(), stable=True).indices
    held = torch.zeros(batch, dtype=torch.bool)
    held[order[3::4]] = True
    return index[~held], index[held]


def clearly_better(errors: Tensor, than: Tensor, z: float = SIGNIFICANCE) -> bool:
    """Whether per-sample ``errors`` beat ``than`` (the same samples) on the mean by more
    than ``z`` standard errors of their paired difference."""
    if not bool(torch.isfinite(than).all()):  # a failed snapshot loses to a finite one
        return bool(torch.isfinite(errors).all())
    diff = than - errors
    if len(diff) < 2:
        return bool(diff.mean() > 0)
    return bool(diff.mean() > z * diff.std() / len(diff) ** 0.5)


def _subset(x: Tensor, target: Tensor, cond, uncond, part: Tensor):
    """The inputs of one part of the batch; conditioning tensors with a batch axis follow."""

    def pick(inputs):
        if inputs is None:
            return None
        return {
            k: v[part] if isinstance(v, Tensor) and v.ndim and v.shape[0] == x.shape[0] else v
            for k, v in inputs.items()
        }

    return x[part], target[part], pick(cond), pick(uncond)


def chunks(inputs, batch_size: int | None) -> list:
    """(noises, targets, cond, uncond) in chunks of at most ``batch_size`` samples (the
    inputs themselves where they fit in one)."""
    size = inputs[0].shape[0]
    if batch_size is None or size <= batch_size:
        return [inputs]
    return [_subset(*inputs, part) for part in torch.arange(size).split(batch_size)]


def program_errors(
    model: Model,
    program: Program,
    inputs,
    batch_size: int | None = None,
    recompute: bool = False,
) -> Tensor:
    """Per-sample RMSE of ``program`` run from the inputs' noises against their targets, in
    chunks of at most ``batch_size``: the metric fewstep reports, fitted directly (a pooled
    MSE would let a few hard samples dominate)."""
    return torch.cat(
        [
            per_sample_rmse(
                run(model, program, x, cond=cond, uncond=uncond, recompute=recompute),
                y,
                eps=GRAD_EPS,
            )
            for x, y, cond, uncond in chunks(inputs, batch_size)
        ]
    )


def check_batch_size(batch_size: int | None) -> int | None:
    """``batch_size`` if None or a positive integer, else ``ArgumentError``."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ArgumentError("batch_size", f"must be a positive integer, got {batch_size!r}")
    return batch_size


def tensor_points(schedule: NoiseSchedule, times: Tensor) -> tuple[Point, ...]:
    """Points whose fields are differentiable 0-d tensors."""
    alpha, sigma = schedule.alpha_sigma(times)
    d_alpha, d_sigma = schedule.alpha_sigma_derivative(times)
    lam = schedule.lam(times)
    return tuple(
        Point(times[i], alpha[i], sigma[i], lam[i], d_alpha[i], d_sigma[i])
        for i in range(len(times))
    )


class GridParameters(nn.Module):
    """Strictly decreasing times from t_max: softmax-weighted gaps in log tau (the classical
    noise level), down to an end that is learnable (at or above t_min) or pinned at t_min."""

    def __init__(self, schedule: NoiseSchedule, times: Sequence[float], learn_end: bool = True):
        super().__init__()
        self.schedule = schedule
        t = torch.tensor(list(times), dtype=torch.float64)
        s = torch.log(classical_sigma(schedule, t))
        self.s_start = float(s[0])
        self.s_min = float(torch.log(classical_sigma(schedule, torch.tensor(schedule.t_min))))
        self.n = len(times)
        gaps = (s[:-1] - s[1:]).clamp_min(1e-6)
        self.theta = nn.Parameter(torch.log(gaps / gaps.sum()))
        end_gap = max(float(s[-1]) - self.s_min, 1e-4)
        self.phi = nn.Parameter(
            torch.tensor(math.log(end_gap), dtype=torch.float64), requires_grad=learn_end
        )
        self.learn_end = learn_end

    def times(self) -> Tensor:
        if self.n == 1:
            return torch.tensor([self.schedule.t_max], dtype=torch.float64)
        s_end = self.s_min + torch.exp(self.phi) if self.learn_end else torch.tensor(self.s_min)
        s_end = torch.minimum(s_end, torch.tensor(self.s_start - 1e-3, dtype=torch.float64))
        fractions = torch.softmax(self.theta, 0)
        s = self.s_start - torch.cat([fractions.new_zeros(1), fractions.cumsum(0)]) * (
            self.s_start - s_end
        )
        t = t_of_classical_sigma(self.schedule, torch.exp(s[1:]))
        t = torch.clamp(t, self.schedule.t_min, self.schedule.t_max)
        return torch.cat([torch.tensor([self.schedule.t_max], dtype=torch.float64), t])


def correction_parameters(program: Program) -> nn.ParameterList:
    """Zero-initialised corrections: per combination, its scale and a data coefficient for
    every evaluation made before it."""
    params, made = [], 0
    for ins in program.instructions:
        if isinstance(ins, Combine):
            params.append(nn.Parameter(torch.zeros(1 + made, dtype=torch.float64)))
        else:
            made += 1
    return nn.ParameterList(params)


def as_corrections(params: nn.ParameterList, detach: bool = False) -> list[Correction]:
    out = []
    for p in params:
        v = p.detach() if detach else p
        scale = float(v[0]) if detach else v[0]
        data = {j: (float(v[1 + j]) if detach else v[1 + j]) for j in range(len(v) - 1)}
        out.append(Correction(scale, data))
    return out


class Descent:
    """One gradient refinement, run in pieces (``advance``) so that several can be screened
    and only the promising ones finished: a descent advanced in pieces ends where one run in
    a single go would (its learning-rate schedule spans ``iterations`` either way).

    It fits the sampler's mean per-sample RMSE against the teacher's target on three quarters
    of its noises. Call times (the times the network sees, offsets in log tau from the grid's)
    are learned with ``learn_call_times``: the time-shift sampler's correction of exposure
    bias. With ``gaussian`` the first evaluation is the analytic first step (nfe model
    calls). ``batch_size`` bounds how many noises one differentiated run holds (its memory:
    every network call's activations are kept for the backward pass); a step then
    accumulates the gradient over chunks of its batch, to the same loss. With ``recompute``
    a run keeps one call's activations at a time, each call run again in the backward.
    ``draw_seed`` seeds which noises its minibatches draw, where it draws them."""

    def __init__(
        self,
        model: Model,
        solver: Solver,
        nfe: int,
        times: Sequence[float],
        teacher: Teacher,
        *,
        iterations: int = 200,
        learn_times: bool = True,
        learn_end: bool = True,
        learn_coefficients: bool = True,
        learn_call_times: bool = True,
        lr_times: float = 0.03,
        lr_coefficients: float = 2e-3,
        gaussian: GaussianData | None = None,
        progress=None,
        batch_size: int | None = None,
        recompute: bool = False,
        draw_seed: int = 0,
    ):
        schedule = model.schedule
        self.recompute = recompute
        self.model, self.solver, self.nfe, self.gaussian = model, solver, nfe, gaussian
        self.iterations, self.progress = iterations, progress
        self.batch_size = check_batch_size(batch_size)
        self.learn_coefficients, self.learn_call_times = learn_coefficients, learn_call_times
        self.grid = GridParameters(schedule, times, learn_end and learn_times)
        self.grid.theta.requires_grad_(learn_times)
        self.corrections = correction_parameters(
            self._compile(tensor_points(schedule, self.grid.times().detach()))
        )
        for p in self.corrections:
            p.requires_grad_(learn_coefficients)
        # a model call at t_max stays there (where the flow's noise level is infinite)
        self.fixed = int(gaussian is None)
        self.shifts = torch.zeros(
            nfe - self.fixed, dtype=torch.float64, requires_grad=learn_call_times
        )
        groups = []
        if learn_times:
            grid = self.grid
            params = [grid.theta, grid.phi] if grid.learn_end else [grid.theta]
            groups.append({"params": params, "lr": lr_times})
        if learn_coefficients:
            groups.append({"params": list(self.corrections), "lr": lr_coefficients})
        if learn_call_times:
            groups.append({"params": [self.shifts], "lr": lr_times})
        self.groups = groups
        self.tau_range = classical_sigma(
            schedule, torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
        )
        x0 = teacher.start(schedule)
        target = teacher.target.to(torch.float64)
        self.inputs = (x0, target, teacher.cond, teacher.uncond)
        label = teacher.label()
        self.fit, self.held = held_out_split(x0.shape[0], None if label is None else label[1])
        self.fit_inputs = _subset(*self.inputs, self.fit)
        self.held_inputs = _subset(*self.inputs, self.held)
        # the same minibatches on every run of a draw_seed
        self.draw = torch.Generator().manual_seed(draw_seed)
        self.best = self.last = self._snapshot()
        self.start = float(self.best[0].mean())
        self.steps = 0
        self.stopped = not groups
        if groups:
            self.optimizer = torch.optim.Adam(groups)
            self.decay = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, max(1, iterations)
            )

    @property
    def done(self) -> bool:
        """Whether the descent has run its iterations or stopped off the sampler's domain."""
        return self.stopped or self.steps >= self.iterations

    @property
    def minibatched(self) -> bool:
        """Whether each step fits a fresh draw of ``FIT_BATCH`` noises (not all of them)."""
        return len(self.fit) > FIT_BATCH

    @property
    def held_out(self) -> float:
        """The lowest held-out mean RMSE of its snapshots so far, the start included (a
        descent's held-out error spikes where samples cross between modes, on its way down)."""
        return float(self.best[0].mean())

    def advance(self, steps: int) -> None:
        """Up to ``steps`` more gradient steps (fewer where the descent ends first)."""
        for _ in range(steps):
            if self.done:
                return
            self._step()

    def result(self) -> tuple[list[float], list[Correction], list[float] | None, float, float]:
        """(times, corrections, call times, held-out mean RMSE before and after): the
        descent's latest snapshot, unless an earlier one beats it clearly there."""
        best, last = self.best, self.last
        held_errors, times, corrections, calls = best if clearly_better(best[0], last[0]) else last
        return times, corrections, calls, self.start, float(held_errors.mean())

    def _compile(self, points) -> Program:
        program = self.solver.compile(
            Grid(self.model.schedule, points), self.nfe + (self.gaussian is not None)
        )
        return program if self.gaussian is None else analytic_start(program, self.gaussian)

    def _program(self) -> Program:
        schedule = self.model.schedule
        program = corrected(
            self._compile(tensor_points(schedule, self.grid.times())),
            as_corrections(self.corrections),
        )
        if not self.learn_call_times:
            return program
        return shifted(program, tensor_points(schedule, self._call_times(program)))

    def _call_times(self, program: Program) -> Tensor:
        schedule = self.model.schedule
        base_t = torch.stack(
            [torch.as_tensor(ins.point.t, dtype=torch.float64) for ins in program.evaluations]
        )
        tau = classical_sigma(schedule, base_t) * torch.exp(
            torch.cat([self.shifts.new_zeros(self.fixed), self.shifts])
        )
        tau = torch.minimum(torch.maximum(tau, self.tau_range[0]), self.tau_range[1])
        return torch.clamp(t_of_classical_sigma(schedule, tau), schedule.t_min, schedule.t_max)

    def _fitting_batch(self):
        """One step's fitting inputs: all of them, or a fresh draw of ``FIT_BATCH``."""
        if not self.minibatched:
            return self.fit_inputs
        draw = torch.randperm(len(self.fit), generator=self.draw)[:FIT_BATCH]
        return _subset(*self.inputs, self.fit[draw])

    def _snapshot(self):
        # per-sample held-out errors, compared on the mean (the metric fitted and reported:
        # the median is blind to the few samples a sampler sends to another mode, which
        # carry the mean on multimodal data)
        with torch.no_grad():
            program = self._program()
            try:
                held_errors = program_errors(self.model, program, self.held_inputs, self.batch_size)
            except NonFiniteError:  # parameters off the sampler's domain: never kept
                held_errors = torch.full((len(self.held),), math.inf, dtype=torch.float64)
            calls = (
                [float(ins.point.t) for ins in program.evaluations]
                if self.learn_call_times
                else None
            )
            return (
                held_errors,
                [float(t) for t in self.grid.times()],
                as_corrections(self.corrections, detach=True) if self.learn_coefficients else [],
                calls,
            )

    def _step(self) -> None:
        self.optimizer.zero_grad()
        batch = self._fitting_batch()
        size = batch[0].shape[0]
        parts = chunks(batch, self.batch_size)
        for chunk in parts:  # the gradient of the mean, accumulated chunk by chunk
            with torch.enable_grad():  # also when called under no_grad, as pipelines run
                try:
                    errors = program_errors(
                        self.model, self._program(), chunk, recompute=self.recompute
                    )
                except NonFiniteError:
                    errors = None  # the parameters left the sampler's domain: keep the best
                if errors is None or not bool(torch.isfinite(errors).all()):
                    self.stopped = True
                    return
                loss = errors.mean() if len(parts) == 1 else errors.sum() / size
                # gradients of the sampler's parameters only: a network whose weights require
                # grad (as a diffusers model's do) gets no weight gradients computed or left
                loss.backward(inputs=[p for g in self.groups for p in g["params"]])
        grads = [p.grad for g in self.groups for p in g["params"] if p.grad is not None]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self.stopped = True  # a step would poison the parameters: keep the best seen
            return
        self.optimizer.step()
        self.decay.step()
        self.steps += 1
        if self.steps % VALIDATE_EVERY == 0 or self.steps == self.iterations:
            self.last = self._snapshot()
            if self.last[0].mean() < self.best[0].mean():
                self.best = self.last
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(held_out_mean=f"{float(self.last[0].mean()):.3e}")
