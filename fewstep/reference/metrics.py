"""Error metrics against exact references."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def per_sample_rmse(x: Tensor, reference: Tensor, eps: float = 0.0) -> Tensor:
    """Root-mean-square error of each sample over its non-batch dimensions, differentiable
    (``eps`` under the root keeps the gradient finite at zero error)."""
    return (x - reference).pow(2).reshape(x.shape[0], -1).mean(1).add(eps).sqrt()


def rmse(x: Tensor, reference: Tensor) -> Tensor:
    """Per-sample root-mean-square error over all non-batch dimensions (float64, detached)."""
    cpu64 = {"device": "cpu", "dtype": torch.float64}
    return per_sample_rmse(x.detach().to(**cpu64), reference.detach().to(**cpu64))


def convergence_order(nfes: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of -log(error) against log(nfe): the measured order."""
    slope = np.polyfit(np.log(np.asarray(nfes, float)), np.log(np.asarray(errors, float)), 1)[0]
    return float(-slope)


def measure_order(
    problem, solver, nfes: Sequence[int], noise: Tensor, **sample_options
) -> tuple[list[float], float]:
    """Median per-sample RMSE against the exact reference at each NFE, and the fitted order
    (slope in log-log over the given NFEs, which should lie in the asymptotic range)."""
    from ..sampling import sample

    ref = problem.reference(noise)
    model = problem.model()
    errors = [
        float(rmse(sample(model, noise, solver=solver, nfe=n, **sample_options), ref).median())
        for n in nfes
    ]
    return errors, convergence_order(nfes, errors)
