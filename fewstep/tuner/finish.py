"""The finish: a tuned sampler's result refitted as a combination of what the run computed.

A few-step sampler returns its last call's data prediction: a denoiser's posterior mean at
a noise level well above zero, which the earlier evaluations can sharpen. The finish adds
to it the state that call saw and every evaluation's data prediction, with coefficients
fitted to the teacher. The result is affine in them, so its mean per-sample RMSE (the
metric tuning fits) is convex and L-BFGS finds the optimum without further model calls: it
is fitted on three quarters of the calibration noises and kept only where the held-out
quarter's mean error falls.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..model import Model
from ..program import Execution, Program
from ..reference.metrics import per_sample_rmse
from .config import Correction
from .gradient import GRAD_EPS, chunks, held_out_split
from .teacher import Teacher


def run_features(
    model: Model, program: Program, teacher: Teacher, batch_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """(state, data) from the teacher's noises: the state the output evaluation was made at
    (batch, ...) and every evaluation's data prediction (evaluations, batch, ...); run in
    chunks of at most ``batch_size`` noises."""
    keep_all = replace(program, releases=tuple(() for _ in program.instructions))
    inputs = (teacher.start(model.schedule), teacher.target, teacher.cond, teacher.uncond)
    states, data = [], []
    for x0, _, cond, uncond in chunks(inputs, batch_size):
        execution = Execution(keep_all, x0, cond=cond)
        with torch.no_grad():
            while (ins := execution.advance()) is not None:
                state = execution.state(ins)
                execution.give(model.evaluate(state, ins.point, cond, uncond))
        states.append(state)
        data.append(torch.stack([r.data for r in execution.results]))
    return torch.cat(states), torch.cat(data, 1)


def fit_finish(
    model: Model,
    program: Program,
    teacher: Teacher,
    iterations: int = 100,
    batch_size: int | None = None,
) -> tuple[Correction | None, float, float]:
    """(the finish, or None where it does not lower the held-out error; the held-out mean
    RMSE without and with it) for a program without a finish."""
    state, data = run_features(model, program, teacher, batch_size)
    if program.finish is not None or program.output != data.shape[0] - 1:
        raise ValueError("fit_finish needs a program whose result is its last evaluation")
    target = teacher.target.to(data)
    label = teacher.label()
    fit, held = held_out_split(target.shape[0], None if label is None else label[1])
    output = data.shape[0] - 1
    theta = torch.zeros(1 + data.shape[0], dtype=data.dtype, requires_grad=True)

    def result(part: Tensor, coefficients: Tensor) -> Tensor:
        mixed = torch.tensordot(coefficients[1:], data[:, part], dims=1)
        return data[output, part] + coefficients[0] * state[part] + mixed

    def loss(part: Tensor, coefficients: Tensor) -> Tensor:
        return per_sample_rmse(result(part, coefficients), target[part], eps=GRAD_EPS).mean()

    optimizer = torch.optim.LBFGS(
        [theta], max_iter=iterations, line_search_fn="strong_wolfe", tolerance_change=1e-15
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss(fit, theta)
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        before = float(loss(held, torch.zeros_like(theta)))
        after = float(loss(held, theta))
    if not after < before:
        return None, before, before
    values = [float(v) for v in theta.detach()]
    return Correction(values[0], dict(enumerate(values[1:]))), before, after
