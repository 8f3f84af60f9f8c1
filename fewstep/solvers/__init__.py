"""The solver zoo: every solver by name, each a coefficient rule on one core."""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentError
from .base import Grid, MultistepSolver, Solver
from .classical import Euler
from .exponential import DDIM

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DDIM, Euler)}


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
        raise ArgumentError("solver", f"unknown {spec!r}", f"one of {sorted(SOLVERS)}")
    try:
        return SOLVERS[spec](**options)
    except TypeError as err:
        raise ArgumentError(
            "solver options", f"{spec!r} does not take {sorted(options)}: {err}"
        ) from err


__all__ = ["SOLVERS", "Grid", "MultistepSolver", "Solver", "get_solver"]
