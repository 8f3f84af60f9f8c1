"""Typed errors: each names what was wrong and how to fix it."""

from __future__ import annotations


class FewstepError(Exception):
    """Base class of every error fewstep raises on purpose."""

    def __reduce__(self):  # pickles (for worker processes) with its own arguments
        return type(self), getattr(self, "_init", self.args)


class ArgumentError(FewstepError, ValueError):
    """A bad argument; the message names the argument and the fix."""

    def __init__(self, argument: str, problem: str, fix: str | None = None):
        self.argument = argument
        self._init = (argument, problem, fix)
        message = f"{argument}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class ModelOutputError(FewstepError, RuntimeError):
    """The wrapped model returned something fewstep cannot use (wrong shape, dtype)."""


class NonFiniteError(FewstepError, FloatingPointError):
    """A model output or sampler state became NaN or infinite; names the step and time."""

    def __init__(self, step: int, t: float, what: str = "model output"):
        self.step = step
        self.t = t
        self._init = (step, t, what)
        super().__init__(
            f"{what} is not finite at step {step} (t={t:.6g}); sampling stopped "
            "instead of returning NaN samples"
        )
