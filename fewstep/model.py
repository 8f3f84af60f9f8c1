"""The model adapter (layer 2): any parameterization in, data and noise predictions out.

A user callable ``fn(x, t, **cond)`` predicts one of epsilon, sample (x0), v, flow velocity
or score at native time t. ``Model`` turns it into the pair (D, eps) with
x = alpha D + sigma eps, applies guidance and thresholding, and counts model calls (NFE).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ArgumentError, ModelOutputError
from .guidance import DynamicThresholding, Guidance
from .schedules import NoiseSchedule, TimeLike, as_float64

PredictionType = Literal["epsilon", "sample", "v", "flow", "score"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "sample", "v", "flow", "score")
#: layers that act differently in training mode: random (dropout) or batch-dependent
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _network(fn: Callable[..., Tensor]) -> nn.Module | None:
    """The module behind ``fn``: fn itself, the module a bound method belongs to, or an
    adapter's ``network`` (``fewstep.integrations.diffusers.network_model``'s)."""
    if isinstance(fn, nn.Module):
        return fn
    for owner in (getattr(fn, "__self__", None), getattr(fn, "network", None)):
        if isinstance(owner, nn.Module):
            return owner
    return None


class Prediction(NamedTuple):
    """Data prediction D = E[x0 | x_t] and noise prediction eps = E[eps | x_t]."""

    data: Tensor
    noise: Tensor


@dataclass(frozen=True)
class Point:
    """A time of the schedule with everything a step needs, in float64 Python floats."""

    t: float
    alpha: float
    sigma: float
    lam: float
    d_alpha: float
    d_sigma: float

    @classmethod
    def at(cls, schedule: NoiseSchedule, t: float) -> Point:
        return points(schedule, [t])[0]


def points(schedule: NoiseSchedule, times: TimeLike) -> list[Point]:
    """Points of ``schedule`` at ``times`` (one float64 evaluation for all of them)."""
    t = as_float64(times).flatten()
    alpha, sigma = schedule.alpha_sigma(t)
    d_alpha, d_sigma = schedule.alpha_sigma_derivative(t)
    lam = schedule.lam(t)
    rows = zip(*(v.tolist() for v in (t, alpha, sigma, lam, d_alpha, d_sigma)), strict=True)
    return [Point(*row) for row in rows]


def _per_sample(value: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return value


def _batch_cat(name: str, a: Any, b: Any) -> Any:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    if isinstance(a, Tensor) or isinstance(b, Tensor) or a != b:
        raise ArgumentError(
            f"uncond[{name!r}]",
            "conditional and unconditional inputs must both be batched tensors or be equal",
        )
    return a


class Model:
    """Wraps ``fn(x, t, **cond)`` of a declared parameterization on ``schedule``.

    Args:
        fn: the network; called with x, the native time t (a tensor of shape (batch,))
            and the conditioning keyword arguments.
        schedule: the noise schedule the network was trained on.
        prediction: what fn predicts: "epsilon", "sample" (x0), "v" (alpha eps - sigma x0),
            "flow" (the velocity dx/dt of the path alpha(t) x0 + sigma(t) eps) or "score".
        guidance_scale, guidance_rescale: classifier-free guidance; the conditional and
            unconditional inputs go through fn in one batched call.
        thresholding: optional ``DynamicThresholding`` of the data prediction.
        dtype: if given, fn receives x in this dtype (e.g. float16); sampling state stays
            in the noise's dtype.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        schedule: NoiseSchedule,
        prediction: PredictionType = "epsilon",
        *,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        thresholding: DynamicThresholding | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not callable(fn):
            raise ArgumentError("fn", "must be callable as fn(x, t, **cond)")
        if not isinstance(schedule, NoiseSchedule):
            raise ArgumentError(
                "schedule", f"expected a fewstep NoiseSchedule, got {type(schedule).__name__}"
            )
        if prediction not in PREDICTIONS:
            raise ArgumentError("prediction", f"unknown {prediction!r}", f"one of {PREDICTIONS}")
        self.fn = fn
        self.schedule = schedule
        self.prediction = prediction
        self.guidance = Guidance(float(guidance_scale), float(guidance_rescale))
        self.thresholding = thresholding
        self.dtype = dtype
        self.nfe = 0

    def __repr__(self) -> str:
        return (
            f"Model(prediction={self.prediction!r}, schedule={self.schedule!r}, "
            f"guidance_scale={self.guidance.scale})"
        )

    # -- public evaluation at arbitrary times -----------------------------------------------
    def predict(
        self,
        x: Tensor,
        t: TimeLike,
        *,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """(D, eps) at native time t: a scalar or one time per sample."""
        t64 = as_float64(t).flatten()
        if t64.numel() not in (1, x.shape[0]):
            raise ArgumentError("t", f"needs 1 or {x.shape[0]} values, got {t64.numel()}")
        self.schedule.check_times(t64, "t")
        if t64.numel() == 1:
            return self.evaluate(x, Point.at(self.schedule, float(t64)), cond, uncond)
        alpha, sigma = self.schedule.alpha_sigma(t64)
        d_alpha, d_sigma = self.schedule.alpha_sigma_derivative(t64)
        return self._evaluate(x, t64, alpha, sigma, d_alpha, d_sigma, cond, uncond)

    def data(self, x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        return self.predict(x, t, cond=cond).data

    def noise(self, x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        return self.predict(x, t, cond=cond).noise

    # -- the sampler's entry point ----------------------------------------------------------
    def evaluate(
        self,
        x: Tensor,
        point: Point,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """(D, eps) at a precomputed ``Point`` (scalar coefficients: no per-call schedule work)."""
        return self._evaluate(
            x, point.t, point.alpha, point.sigma, point.d_alpha, point.d_sigma, cond, uncond
        )

    def check_inputs(
        self, x: Tensor, cond: Mapping[str, Any] | None, uncond: Mapping[str, Any] | None
    ) -> None:
        """Raise ``ArgumentError`` for inputs that cannot be sampled; called before the loop."""
        if self.guidance.active and uncond is None:
            raise ArgumentError(
                "uncond",
                f"guidance_scale={self.guidance.scale} needs the unconditional inputs",
                "pass uncond={...} (e.g. the null class or empty-prompt embedding)",
            )
        for name, value in {**(cond or {}), **(uncond or {})}.items():
            if isinstance(value, Tensor) and value.ndim and value.shape[0] != x.shape[0]:
                raise ArgumentError(
                    f"cond[{name!r}]",
                    f"batch size {value.shape[0]} does not match the noise batch {x.shape[0]}",
                )

    def check_mode(self) -> None:
        """Warn where the network is in training mode with layers that then act differently
        (dropout, batch statistics): its samples would be random, and would depend on the
        batch, whatever the seeds."""
        network = _network(self.fn)
        if network is None:
            return
        active = [
            name or type(m).__name__
            for name, m in network.named_modules()
            if m.training and isinstance(m, MODE_DEPENDENT) and getattr(m, "p", 1.0) > 0
        ]
        if active:
            warnings.warn(
                f"fn: the network is in training mode, where {len(active)} of its layers "
                f"(e.g. {active[0]!r}) act differently: samples are random and depend on the "
                "batch (call .eval() on it before sampling)",
                stacklevel=3,
            )

    def check_start(self, point: Point) -> None:
        """Raise ``ArgumentError`` if the model cannot give a data prediction at ``point``:
        epsilon and score models carry no information about x0 at zero SNR."""
        if point.alpha == 0.0 and self.prediction in ("epsilon", "score"):
            raise ArgumentError(
                "spacing",
                f"the grid starts at zero SNR (t={point.t:g}), where a {self.prediction!r} "
                "model cannot predict the data",
                "start the grid below t_max, or use a v, sample or flow model",
            )

    def _call(self, x: Tensor, t: float | Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if isinstance(t, Tensor):
            t_in = t.to(device=x.device, dtype=time_dtype).expand(x.shape[0])
        else:
            t_in = torch.full((x.shape[0],), t, dtype=time_dtype, device=x.device)
        x_in = x if self.dtype is None else x.to(self.dtype)
        out = self.fn(x_in, t_in, **(cond or {}))
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != x.shape or not out.is_floating_point():
            got = f"shape {tuple(out.shape)}, {out.dtype}" if isinstance(out, Tensor) else type(out)
            raise ModelOutputError(
                f"the model must return a float tensor shaped like x {tuple(x.shape)}; got {got}"
            )
        return out.to(x.dtype)

    def _raw(self, x: Tensor, t: float | Tensor, cond, uncond) -> Tensor:
        if not self.guidance.active or uncond is None:
            return self._call(x, t, cond)
        cond, uncond = dict(cond or {}), dict(uncond)
        keys = cond.keys() | uncond.keys()
        both = {
            k: _batch_cat(k, uncond.get(k, cond.get(k)), cond.get(k, uncond.get(k))) for k in keys
        }
        t2 = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim else t
        out_u, out_c = self._call(torch.cat([x, x]), t2, both).chunk(2)
        return self.guidance.combine(out_u, out_c)

    def _evaluate(self, x, t, alpha, sigma, d_alpha, d_sigma, cond, uncond) -> Prediction:
        raw = self._raw(x, t, cond, uncond)
        return to_predictions(
            raw,
            x,
            alpha,
            sigma,
            d_alpha,
            d_sigma,
            self.prediction,
            self.schedule.variance_preserving,
            self.thresholding,
        )


def to_predictions(
    raw: Tensor,
    x: Tensor,
    alpha: float | Tensor,
    sigma: float | Tensor,
    d_alpha: float | Tensor,
    d_sigma: float | Tensor,
    prediction: str,
    variance_preserving: bool,
    thresholding: DynamicThresholding | None = None,
) -> Prediction:
    """(D, eps) from a network's raw output of the given parameterization at state x."""
    a, s = _per_sample(alpha, x), _per_sample(sigma, x)
    scalar = isinstance(a, float)
    if prediction == "epsilon":
        noise = raw
        data = torch.sub(x, raw, alpha=s).div_(a) if scalar else (x - s * raw) / a
    elif prediction == "sample":
        data = raw
        noise = torch.sub(x, raw, alpha=a).div_(s) if scalar else (x - a * raw) / s
    elif prediction == "score":
        noise = -s * raw
        data = (x - s * noise) / a
    elif prediction == "v":
        norm = 1.0 if variance_preserving else a * a + s * s
        data = (a * x - s * raw) / norm
        noise = (s * x + a * raw) / norm
    else:  # flow: raw = d_alpha D + d_sigma eps, solved together with x = alpha D + sigma eps
        da, ds = _per_sample(d_alpha, x), _per_sample(d_sigma, x)
        det = ds * a - s * da
        data = (ds * x - s * raw) / det
        noise = (a * raw - da * x) / det
    if thresholding is not None:
        data = thresholding(data)
        noise = (x - a * data) / s
    return Prediction(data, noise)
