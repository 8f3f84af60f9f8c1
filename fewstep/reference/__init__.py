"""Exact references (layer 7): Gaussian mixtures whose denoiser and ODE solution are exact."""

from .distances import mean_log_likelihood, mmd, sliced_wasserstein
from .gmm import GaussianMixture
from .metrics import convergence_order, measure_order, rmse
from .ode import solve_pf_ode
from .problems import Problem, problem

__all__ = [
    "GaussianMixture",
    "Problem",
    "convergence_order",
    "mean_log_likelihood",
    "measure_order",
    "mmd",
    "problem",
    "rmse",
    "sliced_wasserstein",
    "solve_pf_ode",
]
