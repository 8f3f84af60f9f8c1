"""Choosing a time grid on a teacher trajectory by dynamic programming (as GITS and optimal
stepsize distillation do).

The cost of a step from teacher point a to point b is the error of one first-order
exponential step (DDIM) started from the teacher's state at a, against the teacher's state
at b, measured in the classical frame (x / (alpha - k sigma), where errors near the data
are data errors). Stopping at point e costs the error of the data prediction there against
the target. The path of n points from t_max with the least total cost is the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..digest import content_digest
from ..model import Model, points
from .gradient import chunks
from .teacher import Teacher

#: later teacher points whose step errors are formed at once (each a state-sized temporary)
POINTS_AT_ONCE = 8


def _mean_sq(x: Tensor) -> Tensor:
    return x.pow(2).reshape(*x.shape[:2], -1).mean(-1).mean(-1)  # over batch and features


def step_costs(
    model: Model, teacher: Teacher, batch_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """(cost[a, b] of a DDIM step a -> b, end cost[e]), computed once per teacher and target
    and cached on the teacher (the model called on at most ``batch_size`` noises at once)."""
    key = content_digest(teacher.target)
    if key not in teacher.costs:
        teacher.costs[key] = _step_costs(model, teacher, batch_size)
    return teacher.costs[key]


def _step_costs(model: Model, teacher: Teacher, batch_size: int | None) -> tuple[Tensor, Tensor]:
    """The costs, point by point: the model's data prediction at one teacher state at a time
    (T x batch calls), and the errors of the steps from it a block of later points at a time,
    so neither a (T, batch, ...) stack of predictions nor of errors is held."""
    schedule = model.schedule
    pts = points(schedule, teacher.times)
    states = teacher.states
    alpha = torch.tensor([p.alpha for p in pts], dtype=states.dtype)
    sigma = torch.tensor([p.sigma for p in pts], dtype=states.dtype)
    frame = alpha - schedule.classical_k * sigma
    shape = (-1, *([1] * (states.ndim - 1)))
    n = len(pts)
    cost = torch.full((n, n), float("inf"), dtype=torch.float64)
    end = torch.empty(n, dtype=torch.float64)
    for a, point in enumerate(pts):
        inputs = (states[a], teacher.target, teacher.cond, teacher.uncond)
        with torch.no_grad():
            data = torch.cat(
                [
                    model.evaluate(x, point, cond, uncond).data
                    for x, _, cond, uncond in chunks(inputs, batch_size)
                ]
            )
        end[a] = _mean_sq((data - teacher.target)[None])[0].double()
        for b in range(a + 1, n, POINTS_AT_ONCE):  # the later points, a block at a time
            later = slice(b, min(b + POINTS_AT_ONCE, n))
            ratio = (sigma[later] / sigma[a]).view(shape)
            coef = (alpha[later] - alpha[a] * sigma[later] / sigma[a]).view(shape)
            err = (ratio * states[a] + coef * data - states[later]) / frame[later].view(shape)
            cost[a, later] = _mean_sq(err).double()
    return cost, end


def dp_grid(
    cost: Tensor, end: Tensor, n_points: int, times: Tensor, early_end: bool = True
) -> list[float]:
    """The n_points teacher times from the first minimising the summed step costs plus the
    end cost (ending at the last teacher time unless ``early_end``)."""
    n = cost.shape[0]
    if n_points == 1:
        return [float(times[0])]
    best = torch.full((n_points, n), float("inf"), dtype=torch.float64)
    back = torch.zeros((n_points, n), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, n_points):
        total = best[k - 1].unsqueeze(1) + cost  # [a, b]
        best[k], back[k] = total.min(0)
    final = best[n_points - 1] + end
    if not early_end:
        final[:-1] = float("inf")
    j = int(final.argmin())
    path = [j]
    for k in range(n_points - 1, 0, -1):
        j = int(back[k, j])
        path.append(j)
    return [float(times[i]) for i in reversed(path)]
