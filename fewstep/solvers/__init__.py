"""The solver zoo: every solver by name, each a coefficient rule on one core.

A name is a solver class with some settings fixed (``dpmpp_3m`` is DPM-Solver multistep in
data form at order 3); further keyword options configure it (``order=``, ``solver_type=``,
``corrector="unic"``, ...). ``"auto"`` is resolved per schedule by ``fewstep.defaults``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ArgumentError
from .adaptive import DPMSolverAdaptive
from .base import Grid, MultistepSolver, SinglestepSolver, Solver
from .classical import DPM2, IPNDM, LMS, Euler, Heun
from .exponential import DDIM, DEIS, PNDM, DPMSolverMultistep, DPMSolverSinglestep
from .restart import Restart
from .stochastic import ERSDE, DDIMEta, DPMPP2SAncestral, DPMSolverSDE, EulerAncestral, SASolver
from .unipc import UniC, UniPC

#: name -> (factory, settings the name fixes, defaults the user may override)
SOLVERS: dict[str, tuple[Callable[..., Solver], dict[str, Any], dict[str, Any]]] = {
    "ddim": (DDIM, {}, {}),
    "dpm_solver": (DPMSolverSinglestep, {"form": "noise"}, {"order": 3}),
    "dpmpp_2s": (DPMSolverSinglestep, {"form": "data", "order": 2}, {}),
    "dpmpp_3s": (DPMSolverSinglestep, {"form": "data", "order": 3}, {}),
    "dpmpp_2m": (DPMSolverMultistep, {"form": "data", "order": 2}, {}),
    "dpmpp_3m": (DPMSolverMultistep, {"form": "data", "order": 3}, {"solver_type": "exact"}),
    "deis": (DEIS, {}, {}),
    "unipc": (UniPC, {}, {}),
    "ipndm": (IPNDM, {}, {}),
    "pndm": (PNDM, {}, {}),
    "euler": (Euler, {}, {}),
    "heun": (Heun, {}, {}),
    "dpm2": (DPM2, {}, {}),
    "lms": (LMS, {}, {}),
    "dpm_adaptive": (DPMSolverAdaptive, {}, {}),
    # stochastic
    "ddpm": (DDIMEta, {"eta": 1.0}, {}),
    "ddim_eta": (DDIMEta, {}, {}),
    "euler_ancestral": (EulerAncestral, {}, {}),
    "dpmpp_2s_ancestral": (DPMPP2SAncestral, {}, {}),
    "dpmpp_2m_sde": (DPMSolverSDE, {"order": 2}, {}),
    # k-diffusion's damped third-order update: along a noisy SDE path the exact quadratic
    # extrapolation amplifies the injected noise (tests/test_stochastic.py measures it)
    "dpmpp_3m_sde": (DPMSolverSDE, {"order": 3}, {"solver_type": "heun"}),
    "sa_solver": (SASolver, {}, {}),
    "er_sde": (ERSDE, {}, {}),
    "restart": (Restart, {}, {}),
}


def get_solver(spec: str | Solver, **options: Any) -> Solver:
    """A configured solver from its name and options, or the given instance."""
    if isinstance(spec, Solver):
        if options:
            raise ArgumentError(
                "solver options",
                f"{sorted(options)} given with a solver instance",
                "configure the instance instead",
            )
        return spec
    if spec not in SOLVERS:
        raise ArgumentError("solver", f"unknown {spec!r}", f"one of {sorted(SOLVERS)} or 'auto'")
    factory, fixed, defaults = SOLVERS[spec]
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ArgumentError("solver options", f"{spec!r} fixes {clash}", "pick another solver name")
    solver_obj = None
    try:
        solver_obj = factory(**{**defaults, **options, **fixed})
    except TypeError as err:
        raise ArgumentError(
            "solver options", f"{spec!r} does not take {sorted(options)}: {err}"
        ) from err
    solver_obj.name = spec
    return solver_obj


__all__ = [
    "DDIM",
    "DEIS",
    "DPM2",
    "IPNDM",
    "LMS",
    "PNDM",
    "SOLVERS",
    "DPMSolverAdaptive",
    "DPMSolverMultistep",
    "DPMSolverSinglestep",
    "Euler",
    "Grid",
    "Heun",
    "MultistepSolver",
    "SinglestepSolver",
    "Solver",
    "UniC",
    "UniPC",
    "get_solver",
]
