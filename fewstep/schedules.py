"""Noise schedules (layer 1): x_t = alpha(t) x0 + sigma(t) eps in the model's native time t.

Every schedule gives alpha, sigma, the log-SNR lambda = log(alpha / sigma) and its inverse,
in float64. Native time is what the model is called with: the (fractional) training timestep
index for discrete VP, t in [0, 1] for continuous VP and flow, and sigma itself for EDM.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError

TimeLike = float | int | Sequence[float] | np.ndarray | Tensor


def as_float64(value: TimeLike) -> Tensor:
    """A float64 CPU tensor of the given times (the precision every schedule works in);
    tensors keep their autograd graph, so a tuner can differentiate through schedules."""
    if isinstance(value, Tensor):
        return value.to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (numpy.interp) for increasing ``xp``, in torch."""
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (x - x0) / (x1 - x0) * (f1 - f0)


class NoiseSchedule(ABC):
    """alpha(t), sigma(t), lambda(t) and t(lambda) of one diffusion or flow model.

    ``classical_k`` picks the space in which classical integrators (Euler, Heun, LMS)
    integrate: y = x / (alpha - k sigma) against tau = sigma / (alpha - k sigma), where the
    probability-flow ODE reads dy/dtau = (y - D) / tau. k = 0 is the variance-exploding
    space of Karras et al. (k-diffusion's convention), k = -1 the straight path of
    rectified flow (what flow-matching Euler and Heun schedulers integrate).
    """

    t_min: float
    t_max: float
    variance_preserving: bool = False
    classical_k: float = 0.0
    default_spacing: str = "logsnr"

    @abstractmethod
    def lam(self, t: TimeLike) -> Tensor:
        """log(alpha / sigma) at native time t."""

    @abstractmethod
    def t_of_lam(self, lam: TimeLike) -> Tensor:
        """The native time where log(alpha / sigma) equals ``lam`` (inverse of ``lam``)."""

    @abstractmethod
    def alpha_sigma(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)), float64."""

    @abstractmethod
    def alpha_sigma_derivative(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(d alpha / dt, d sigma / dt) in native time: needed to read flow velocities."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this schedule (see ``schedule_from_config``)."""

    def alpha(self, t: TimeLike) -> Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: TimeLike) -> Tensor:
        return self.alpha_sigma(t)[1]

    def edm_sigma(self, t: TimeLike) -> Tensor:
        """sigma / alpha: the noise level of the equivalent variance-exploding process."""
        return torch.exp(-self.lam(t))

    def t_of_edm_sigma(self, sigma: TimeLike) -> Tensor:
        return self.t_of_lam(-torch.log(as_float64(sigma)))

    def initial_scale(self, t0: float) -> float:
        """Factor mapping standard-normal noise to the starting state at time ``t0``."""
        return 1.0

    def kinks(self) -> tuple[float, ...]:
        """Times where alpha and sigma are not smooth (the knots of a tabulated schedule);
        quadrature over native time splits there."""
        return ()

    def check_times(self, t: Tensor, argument: str = "times") -> None:
        """Raise ``ArgumentError`` unless every time lies in [t_min, t_max]."""
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if t.numel() and (t.min() < self.t_min - tol or t.max() > self.t_max + tol):
            raise ArgumentError(
                argument,
                f"times must lie in [{self.t_min:g}, {self.t_max:g}] for {self!r}, "
                f"got [{t.min().item():g}, {t.max().item():g}]",
                "use times of the schedule's native range",
            )

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.config().items() if k not in {"kind", "alphas_cumprod"}
        )
        return f"{type(self).__name__}({args})"


class _VariancePreserving(NoiseSchedule):
    """alpha^2 + sigma^2 = 1: alpha and sigma follow from lambda alone."""

    variance_preserving = True

    def alpha_sigma(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        lam = self.lam(t)
        # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda), stable at +-inf.
        alpha = torch.exp(-0.5 * torch.nn.functional.softplus(-2.0 * lam))
        sigma = torch.exp(-0.5 * torch.nn.functional.softplus(2.0 * lam))
        return alpha, sigma

    @abstractmethod
    def dlam_dt(self, t: TimeLike) -> Tensor:
        """d lambda / dt."""

    def alpha_sigma_derivative(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.alpha_sigma(t)
        dlam = self.dlam_dt(t)
        # d log alpha / d lambda = sigma^2 and d log sigma / d lambda = -alpha^2.
        return alpha * sigma**2 * dlam, -sigma * alpha**2 * dlam


class VPSchedule(_VariancePreserving):
    """Discrete VP schedule from a table of cumulative alphas (what diffusers/SD models use).

    Between integer timesteps, log(sigma / alpha) is interpolated linearly (the k-diffusion
    and diffusers convention), so fractional timesteps are well defined. With a zero
    terminal SNR the last segment interpolates alpha linearly down to 0 instead.
    """

    def __init__(self, alphas_cumprod: TimeLike):
        ac = as_float64(alphas_cumprod).flatten()
        if ac.numel() < 2:
            raise ArgumentError("alphas_cumprod", "needs at least 2 entries")
        if not bool(torch.all(ac[1:] < ac[:-1])) or ac[0] > 1 or ac[-1] < 0:
            raise ArgumentError(
                "alphas_cumprod", "must decrease strictly within [0, 1]", "check the betas"
            )
        if bool(torch.any(ac[:-1] <= 0)):
            raise ArgumentError("alphas_cumprod", "only the last entry may be 0")
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        self.t_min = 0.0
        self.t_max = float(ac.numel() - 1)
        self.zero_terminal_snr = bool(ac[-1] == 0)
        finite = ac[:-1] if self.zero_terminal_snr else ac
        self._log_sigmas = 0.5 * (torch.log1p(-finite) - torch.log(finite))  # log(sigma/alpha)
        self._knots = torch.arange(finite.numel(), dtype=torch.float64)
        if self.zero_terminal_snr:
            self._alpha_last = math.sqrt(float(finite[-1]))  # alpha at the last finite knot

    # constructors -------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: TimeLike, *, rescale_zero_terminal_snr: bool = False) -> VPSchedule:
        """From a beta table; optionally rescaled to zero terminal SNR (Lin et al., 2024)."""
        b = as_float64(betas).flatten()
        if b.numel() < 2 or bool(torch.any(b <= 0)) or bool(torch.any(b >= 1)):
            raise ArgumentError("betas", "must be at least 2 values in (0, 1)")
        ac = torch.cumprod(1.0 - b, 0)
        if rescale_zero_terminal_snr:
            root = ac.sqrt()
            first, last = root[0].clone(), root[-1].clone()
            root = (root - last) * first / (first - last)
            ac = root**2
        return cls(ac)

    @classmethod
    def _from_float32_betas(cls, betas: Tensor, rescale_zero_terminal_snr: bool) -> VPSchedule:
        # Checkpoints were trained with float32 tables: keep exactly those values.
        if rescale_zero_terminal_snr:
            return cls.from_betas(betas.double(), rescale_zero_terminal_snr=True)
        return cls(torch.cumprod(1.0 - betas.float(), 0).double())

    @classmethod
    def linear(
        cls,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_train_timesteps: int = 1000,
        *,
        rescale_zero_terminal_snr: bool = False,
    ) -> VPSchedule:
        """DDPM's linear betas."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        return cls._from_float32_betas(betas, rescale_zero_terminal_snr)

    @classmethod
    def scaled_linear(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        *,
        rescale_zero_terminal_snr: bool = False,
    ) -> VPSchedule:
        """Stable Diffusion's betas: linear in sqrt(beta)."""
        betas = (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
            ** 2
        )
        return cls._from_float32_betas(betas, rescale_zero_terminal_snr)

    @classmethod
    def squaredcos_cap_v2(
        cls,
        num_train_timesteps: int = 1000,
        max_beta: float = 0.999,
        *,
        rescale_zero_terminal_snr: bool = False,
    ) -> VPSchedule:
        """The improved-DDPM cosine schedule, discretised with betas capped at ``max_beta``."""

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
        return cls._from_float32_betas(
            torch.tensor(betas, dtype=torch.float32), rescale_zero_terminal_snr
        )

    # lambda and its inverse ------------------------------------------------------------------
    def lam(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        self.check_times(t, "t")
        out = -_interp(t, self._knots, self._log_sigmas)
        if self.zero_terminal_snr:
            last = self._knots[-1]
            tail = t > last
            if bool(tail.any()):
                alpha = self._alpha_last * (self.t_max - t[tail])
                out[tail] = torch.log(alpha) - 0.5 * torch.log1p(-(alpha**2))
        return out

    def t_of_lam(self, lam: TimeLike) -> Tensor:
        lam = as_float64(lam)
        lo, hi = -self._log_sigmas[-1], -self._log_sigmas[0]
        if lam.numel() and (
            lam.max() > hi + 1e-9 or (not self.zero_terminal_snr and lam.min() < lo - 1e-9)
        ):
            raise ArgumentError("lam", f"log-SNR outside this schedule's range [{lo:g}, {hi:g}]")
        out = _interp(-lam, self._log_sigmas, self._knots)
        if self.zero_terminal_snr:
            tail = lam < lo
            if bool(tail.any()):
                alpha = torch.exp(-0.5 * torch.nn.functional.softplus(-2.0 * lam[tail]))
                out[tail] = self.t_max - alpha / self._alpha_last
        return out

    def dlam_dt(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        slopes = -(self._log_sigmas[1:] - self._log_sigmas[:-1])
        idx = torch.clamp(t.floor().long(), 0, len(slopes) - 1)
        out = slopes[idx]
        if self.zero_terminal_snr:
            tail = t > self._knots[-1]
            if bool(tail.any()):
                alpha = self._alpha_last * (self.t_max - t[tail])
                # d lambda / d alpha = 1 / (alpha sigma^2); d alpha / dt = -alpha_last.
                out[tail] = -self._alpha_last / (alpha * (1 - alpha**2))
        return out

    def kinks(self) -> tuple[float, ...]:
        return tuple(float(k) for k in range(1, self.num_train_timesteps - 1))

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_discrete", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return (
            f"VPSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"zero_terminal_snr={self.zero_terminal_snr})"
        )


class _ContinuousVP(_VariancePreserving):
    """Continuous-time VP given log alpha(t) on [t_min, t_max] within [0, 1]."""

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def dlog_alpha_dt(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor: ...

    def lam(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        self.check_times(t, "t")
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def t_of_lam(self, lam: TimeLike) -> Tensor:
        lam = as_float64(lam)
        return self.t_of_log_alpha(-0.5 * torch.nn.functional.softplus(-2.0 * lam))

    def dlam_dt(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        _, sigma = self.alpha_sigma(t)
        return self.dlog_alpha_dt(t) / sigma**2


class LinearVPSchedule(_ContinuousVP):
    """Continuous VP with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al.)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ArgumentError("beta_min", "need 0 < beta_min < beta_max")
        if not 0 < t_min < 1:
            raise ArgumentError("t_min", "must lie in (0, 1)")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # Solve (b1 - b0) t^2 / 2 + b0 t = S with S = -2 log alpha, in the stable root form.
        s = -2.0 * log_alpha
        d = self.beta_max - self.beta_min
        return 2.0 * s / (torch.sqrt(self.beta_min**2 + 2.0 * d * s) + self.beta_min)

    def config(self) -> dict[str, Any]:
        return {
            "kind": "vp_linear",
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "t_min": self.t_min,
        }


class CosineVPSchedule(_ContinuousVP):
    """Continuous cosine VP (Nichol & Dhariwal); t_max < 1 keeps lambda finite."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not 0 < t_min < t_max < 1:
            raise ArgumentError("t_max", "need 0 < t_min < t_max < 1")
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._log_c0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _theta(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos(self._theta(t))) - self._log_c0

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -torch.tan(self._theta(t)) * math.pi / (2 * (1 + self.s))

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        theta = torch.arccos(torch.exp(log_alpha + self._log_c0))
        return theta * 2 * (1 + self.s) / math.pi - self.s

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_cosine", "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class EDMSchedule(NoiseSchedule):
    """Variance exploding with alpha = 1 and sigma = t (Karras et al.); native time is sigma."""

    default_spacing = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ArgumentError("sigma_min", "need 0 < sigma_min < sigma_max")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    @property
    def sigma_min(self) -> float:
        return self.t_min

    @property
    def sigma_max(self) -> float:
        return self.t_max

    def lam(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        self.check_times(t, "t")
        return -torch.log(t)

    def t_of_lam(self, lam: TimeLike) -> Tensor:
        return torch.exp(-as_float64(lam))

    def alpha_sigma(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = as_float64(t)
        return torch.ones_like(t), t.clone()

    def alpha_sigma_derivative(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = as_float64(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def initial_scale(self, t0: float) -> float:
        return float(t0)

    def config(self) -> dict[str, Any]:
        return {"kind": "edm", "sigma_min": self.t_min, "sigma_max": self.t_max}


class FlowSchedule(NoiseSchedule):
    """Rectified flow: alpha = 1 - t, sigma = t, t in [t_min, 1].

    ``shift`` is the resolution shift of SD3/Flux: the default spacing visits
    t = shift u / (1 + (shift - 1) u) for uniform u. The state at t = 1 is pure noise.
    """

    classical_k = -1.0
    default_spacing = "flow_shift"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3):
        if not shift > 0:
            raise ArgumentError("shift", "must be positive")
        if not 0 < t_min < 1:
            raise ArgumentError("t_min", "must lie in (0, 1)")
        self.shift = float(shift)
        self.t_min, self.t_max = float(t_min), 1.0

    def lam(self, t: TimeLike) -> Tensor:
        t = as_float64(t)
        self.check_times(t, "t")
        return torch.log1p(-t) - torch.log(t)

    def t_of_lam(self, lam: TimeLike) -> Tensor:
        return torch.sigmoid(-as_float64(lam))

    def alpha_sigma(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = as_float64(t)
        return 1.0 - t, t.clone()

    def alpha_sigma_derivative(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = as_float64(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def config(self) -> dict[str, Any]:
        return {"kind": "flow", "shift": self.shift, "t_min": self.t_min}


_KINDS = {
    "vp_discrete": VPSchedule,
    "vp_linear": LinearVPSchedule,
    "vp_cosine": CosineVPSchedule,
    "edm": EDMSchedule,
    "flow": FlowSchedule,
}


def schedule_from_config(config: dict[str, Any]) -> NoiseSchedule:
    """Rebuild a schedule from ``schedule.config()`` (used by saved sampler configs)."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _KINDS:
        raise ArgumentError("config", f"unknown schedule kind {kind!r}", f"one of {sorted(_KINDS)}")
    return _KINDS[kind](**config)
