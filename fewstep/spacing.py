"""Step spacing (layer 3): which native times a sampler visits.

A spacing turns a schedule and a number of points n into n strictly decreasing native
times, normally from t_max to t_min. Every sampler evaluates the model at these times
(singlestep solvers use some of them as intermediate points); the last one is where the
final data prediction is taken.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError
from .schedules import NoiseSchedule, VPSchedule, as_float64


class Spacing(ABC):
    """Maps (schedule, n) to n strictly decreasing native times."""

    @abstractmethod
    def times(self, schedule: NoiseSchedule, n: int) -> Tensor:
        """n float64 native times, strictly decreasing."""


def _finite_edm_sigma_range(schedule: NoiseSchedule, name: str) -> tuple[float, float]:
    hi = float(schedule.edm_sigma(schedule.t_max))
    lo = float(schedule.edm_sigma(schedule.t_min))
    if not math.isfinite(hi):
        raise ArgumentError(
            "spacing",
            f"{name!r} needs a finite noise level at t_max, but this schedule reaches zero SNR",
            "use 'time_uniform', 'flow_shift' or 'trailing', or a table of times",
        )
    return lo, hi


@dataclass(frozen=True)
class TimeUniform(Spacing):
    """Uniform in native time (DDIM's and flow matching's default grid)."""

    def times(self, schedule, n):
        return torch.linspace(schedule.t_max, schedule.t_min, n, dtype=torch.float64)


@dataclass(frozen=True)
class LogSNR(Spacing):
    """Uniform in log-SNR lambda; identical to k-diffusion's 'exponential' (uniform log sigma)."""

    def times(self, schedule, n):
        lo, hi = _finite_edm_sigma_range(schedule, "logsnr")
        lam = torch.linspace(-math.log(hi), -math.log(lo), n, dtype=torch.float64)
        return _pin_ends(schedule, schedule.t_of_lam(lam))


@dataclass(frozen=True)
class Karras(Spacing):
    """Karras et al.'s rho-warped sigma ramp (rho = 7 in EDM)."""

    rho: float = 7.0

    def times(self, schedule, n):
        lo, hi = _finite_edm_sigma_range(schedule, "karras")
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        inv = hi ** (1 / self.rho) + ramp * (lo ** (1 / self.rho) - hi ** (1 / self.rho))
        return _pin_ends(schedule, schedule.t_of_edm_sigma(inv**self.rho))


@dataclass(frozen=True)
class TimeQuadratic(Spacing):
    """Quadratic in native time (DPM-Solver's 'time_quadratic'): denser near t_min."""

    def times(self, schedule, n):
        root = torch.linspace(
            math.sqrt(schedule.t_max), math.sqrt(schedule.t_min), n, dtype=torch.float64
        )
        return _pin_ends(schedule, root**2)


def _discrete(schedule: NoiseSchedule, name: str) -> VPSchedule:
    if not isinstance(schedule, VPSchedule):
        raise ArgumentError(
            "spacing", f"{name!r} is defined for discrete VP schedules only", "use 'time_uniform'"
        )
    return schedule


@dataclass(frozen=True)
class Linspace(Spacing):
    """diffusers' 'linspace': rounded linspace(0, N-1, n), from t_max down to 0."""

    def times(self, schedule, n):
        sch = _discrete(schedule, "linspace")
        steps = np.linspace(0, sch.num_train_timesteps - 1, n).round()[::-1]
        return as_float64(steps.copy())


@dataclass(frozen=True)
class Leading(Spacing):
    """diffusers' 'leading' (Stable Diffusion's original): multiples of N // n plus an offset.
    It neither starts at t_max nor ends at 0, which biases samples; kept for compatibility."""

    offset: int = 1

    def times(self, schedule, n):
        sch = _discrete(schedule, "leading")
        ratio = sch.num_train_timesteps // n
        steps = (np.arange(0, n) * ratio).round()[::-1] + self.offset
        return as_float64(steps.copy())


@dataclass(frozen=True)
class Trailing(Spacing):
    """diffusers' 'trailing': starts at t_max, step N / n; ends at N/n - 1, not 0."""

    def times(self, schedule, n):
        sch = _discrete(schedule, "trailing")
        n_train = sch.num_train_timesteps
        steps = np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1
        return as_float64(steps.astype(np.float64))


def shift_time(t: Tensor | float, shift: float) -> Tensor | float:
    """The SD3/Flux resolution shift t -> shift t / (1 + (shift - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class FlowShift(Spacing):
    """Uniform time warped by the resolution shift (schedule.shift when ``shift`` is None)."""

    shift: float | None = None

    def times(self, schedule, n):
        if schedule.t_max > 1:
            raise ArgumentError("spacing", "'flow_shift' needs times within [0, 1]")
        shift = self.shift if self.shift is not None else getattr(schedule, "shift", 1.0)
        lo, hi = schedule.t_min, schedule.t_max
        u_lo, u_hi = (t / (shift - (shift - 1) * t) for t in (lo, hi))
        u = torch.linspace(u_hi, u_lo, n, dtype=torch.float64)
        return _pin_ends(schedule, shift_time(u, shift))


def classical_sigma(schedule: NoiseSchedule, t) -> Tensor:
    """tau = sigma / (alpha - k sigma), the noise level of the schedule's classical frame:
    sigma / alpha for VP and EDM, t itself for rectified flow (finite at t = 1)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return sigma / (alpha - schedule.classical_k * sigma)


def t_of_classical_sigma(schedule: NoiseSchedule, tau) -> Tensor:
    tau = as_float64(tau)
    return schedule.t_of_edm_sigma(tau / (1 + schedule.classical_k * tau))


@dataclass(frozen=True)
class Warped(Spacing):
    """fewstep's calibrated family: log tau (tau = ``classical_sigma``) moves from its start
    to ``end`` along the Beta(a, b) distribution function of a uniform ramp. a = b = 1 is
    uniform in log-SNR; a > 1 takes small steps at high noise, b > 1 small steps near the
    end. ``end`` is the tau of the last point (None: the schedule's t_min); stopping above
    t_min returns the data prediction there, which at very few steps is more accurate than
    integrating on. The default spacing of ``solver="auto"`` is this family with parameters
    fitted per NFE (``fewstep.defaults``)."""

    a: float = 1.0
    b: float = 1.0
    end: float | None = None

    def __post_init__(self):
        if not (self.a > 0 and self.b > 0):
            raise ArgumentError("Warped", f"a and b must be positive, got {self.a}, {self.b}")
        if self.end is not None and not self.end > 0:
            raise ArgumentError("Warped.end", f"must be a positive noise level, got {self.end}")

    def times(self, schedule, n):
        from scipy.special import betainc

        hi = float(classical_sigma(schedule, schedule.t_max))
        lo = float(classical_sigma(schedule, schedule.t_min))
        end = lo if self.end is None else min(max(self.end, lo), hi)
        if n == 1:
            return as_float64([schedule.t_max])
        u = np.linspace(0.0, 1.0, n)
        warp = betainc(self.a, self.b, u)
        log_tau = math.log(hi) + (math.log(end) - math.log(hi)) * warp
        t = t_of_classical_sigma(schedule, np.exp(log_tau))
        shift = getattr(schedule, "shift", 1.0)
        if shift != 1.0:  # SD3/Flux resolution shift on top, as flow models expect
            t = shift_time(t, shift)
        t[0] = schedule.t_max
        if self.end is None:
            t[-1] = schedule.t_min
        return t


@dataclass(frozen=True)
class Table(Spacing):
    """A tabulated schedule (e.g. an Align-Your-Steps table), interpolated to n points:
    log-linearly in sigma/alpha for ``kind='sigma'``, linearly for ``kind='time'``.
    Published tables are rounded: values within 1% outside the schedule's range are
    clamped onto it; values further out are an error."""

    values: tuple[float, ...]
    kind: str = "sigma"

    def __post_init__(self):
        if self.kind not in ("sigma", "time"):
            raise ArgumentError("Table.kind", f"unknown {self.kind!r}", "'sigma' or 'time'")
        v = np.asarray(self.values, dtype=np.float64)
        if v.ndim != 1 or len(v) < 2 or not np.all(np.diff(v) < 0):
            raise ArgumentError("Table.values", "need at least 2 strictly decreasing values")
        if self.kind == "sigma" and v[-1] <= 0:
            raise ArgumentError("Table.values", "sigmas must be positive")

    def times(self, schedule, n):
        v = np.asarray(self.values, dtype=np.float64)
        xs, new = np.linspace(0, 1, len(v)), np.linspace(0, 1, n)
        if self.kind == "sigma":
            lo, hi = (float(schedule.edm_sigma(t)) for t in (schedule.t_min, schedule.t_max))
            v = _clamp_rounded(v, lo, hi, "sigma")
            sig = np.exp(np.interp(new, xs, np.log(v)))
            return schedule.t_of_edm_sigma(sig)
        v = _clamp_rounded(v, schedule.t_min, schedule.t_max, "time")
        return as_float64(np.interp(new, xs, v))


def _clamp_rounded(v: np.ndarray, lo: float, hi: float, what: str) -> np.ndarray:
    if v.max() > hi * 1.01 or v.min() < lo / 1.01:
        raise ArgumentError(
            "Table.values",
            f"{what}s span [{v.min():g}, {v.max():g}], outside this schedule's [{lo:g}, {hi:g}]",
        )
    return np.clip(v, lo, hi)


@dataclass(frozen=True)
class Times(Spacing):
    """Exactly these native times (a tuned or user-chosen grid)."""

    values: tuple[float, ...]

    def times(self, schedule, n):
        t = as_float64(list(self.values))
        if t.numel() != n:
            raise ArgumentError(
                "spacing",
                f"the table has {t.numel()} times but this solver and nfe need {n}",
                f"give {n} times or change nfe",
            )
        return t


def _pin_ends(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Put the end points exactly on t_max and t_min (round-trip error would leave them
    a few ulps outside the schedule's range)."""
    t = t.clone()
    if t.numel() > 0:
        t[0] = schedule.t_max
    if t.numel() > 1:
        t[-1] = schedule.t_min
    return t


SPACINGS: dict[str, Spacing] = {
    "time_uniform": TimeUniform(),
    "logsnr": LogSNR(),
    "exponential": LogSNR(),
    "karras": Karras(),
    "time_quadratic": TimeQuadratic(),
    "linspace": Linspace(),
    "leading": Leading(),
    "trailing": Trailing(),
    "flow_shift": FlowShift(),
}


def resolve_spacing(
    spec: str | Spacing | Sequence[float] | Tensor | np.ndarray | None, schedule: NoiseSchedule
) -> Spacing:
    """A ``Spacing`` from a name, an instance, a sequence of times, or None (the schedule's
    documented default)."""
    if spec is None:
        spec = schedule.default_spacing
    if isinstance(spec, Spacing):
        return spec
    if isinstance(spec, str):
        if spec not in SPACINGS:
            raise ArgumentError("spacing", f"unknown {spec!r}", f"one of {sorted(SPACINGS)}")
        return SPACINGS[spec]
    if isinstance(spec, (Sequence, Tensor, np.ndarray)):
        return Times(tuple(as_float64(spec).flatten().tolist()))
    raise ArgumentError(
        "spacing", f"cannot use a {type(spec).__name__}", "a name or a list of times"
    )


def check_grid(schedule: NoiseSchedule, times: Tensor) -> None:
    """Raise ``ArgumentError`` unless the grid is strictly decreasing within the schedule."""
    if times.ndim != 1 or times.numel() < 1:
        raise ArgumentError("spacing", "produced no times")
    if not bool(torch.all(torch.isfinite(times))):
        raise ArgumentError("spacing", "times must be finite")
    if times.numel() > 1 and not bool(torch.all(times[1:] < times[:-1])):
        raise ArgumentError(
            "spacing",
            "times must be strictly decreasing (from noise to data)",
            "fewer steps than the discrete schedule has timesteps, or sort the table",
        )
    schedule.check_times(times, "spacing")
