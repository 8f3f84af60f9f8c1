"""Exact references (layer 7): Gaussian mixtures whose denoiser and ODE solution are exact."""

from .gmm import GaussianMixture
from .metrics import convergence_order, measure_order, rmse
from .ode import solve_pf_ode
from .problems import Problem, problem

__all__ = [
    "GaussianMixture",
    "Problem",
    "convergence_order",
    "measure_order",
    "problem",
    "rmse",
    "solve_pf_ode",
]
