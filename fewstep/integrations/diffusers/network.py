"""A diffusers network as a fewstep ``Model``: what ``fewstep.tune`` and ``fewstep.sample``
need to run a pipeline's UNet or transformer outside the pipeline's loop.

    model = network_model(pipe.unet, pipe.scheduler, guidance_scale=7.5)
    config = fewstep.tune(model, 5, calibration=latents, cond={"encoder_hidden_states": text},
                          uncond={"encoder_hidden_states": empty}, analytic=False)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, tuned=PATH)

The network gets what the pipeline would hand it: the latents, the pipeline's timesteps
(those ``FewstepScheduler.timesteps`` lists: t for VP, t * num_train_timesteps for flow, in
float32) mapped as the pipeline maps them, and the conditioning as keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn

from ...errors import ArgumentError
from ...model import Model
from .scheduler import FewstepScheduler

#: networks whose pipelines divide the scheduler's timesteps by 1000 before calling them
TIMESTEP_PER_THOUSAND = (
    "ChromaTransformer2DModel",
    "Flux2Transformer2DModel",
    "FluxTransformer2DModel",
    "LongCatImageTransformer2DModel",
    "OvisImageTransformer2DModel",
    "QwenImage21Transformer2DModel",
    "QwenImageTransformer2DModel",
)


def _unwrapped(network: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper compiles (whose forward takes ``*args``)."""
    return getattr(network, "_orig_mod", network)


def _per_thousand(t: Tensor) -> Tensor:
    return t / 1000


class NetworkCall:
    """``fn(x, t, **cond)`` for a diffusers network: t in fewstep's time becomes the
    pipeline's timestep, conditions become the network's keyword arguments, and the
    network's output (its ``sample``; the first half of the channels where it also predicts
    a variance, as DiT, PixArt and DeepFloyd IF do) is returned."""

    def __init__(
        self,
        network: nn.Module,
        time_scale: float,
        timestep: Callable[[Tensor], Tensor] | None,
        fixed: Mapping[str, Any],
    ):
        self.network = network
        self.time_scale = time_scale
        self.timestep = timestep
        self.fixed = dict(fixed)
        inner = _unwrapped(network)
        params = inspect.signature(inner.forward).parameters
        if "timestep" not in params:
            raise ArgumentError(
                "network",
                f"{type(inner).__name__}.forward takes no timestep",
                "wrap it yourself: fewstep.Model(lambda x, t, **cond: ..., schedule, prediction)",
            )
        self.sample_name = next(iter(params))
        self.accepts = set(params)
        self.any_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.added = "added_cond_kwargs" in params  # UNets of SDXL-like pipelines

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        timestep = (t * self.time_scale).to(torch.float32)
        if self.timestep is not None:
            timestep = self.timestep(timestep)
        kwargs = self._keywords({**self.fixed, **cond})
        out = self.network(**{self.sample_name: x}, timestep=timestep, **kwargs)
        out = out.sample if hasattr(out, "sample") else out
        out = out[0] if isinstance(out, tuple) else out
        if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:  # a learned variance
            out = out[:, : x.shape[1]]
        return out

    def _keywords(self, inputs: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in inputs if k not in self.accepts]
        if not unknown or self.any_keyword:
            return inputs
        if not self.added:
            where = "fixed" if unknown[0] in self.fixed else "cond"
            raise ArgumentError(
                f"{where}[{unknown[0]!r}]",
                f"{type(_unwrapped(self.network)).__name__}.forward takes no such argument",
                f"one of {sorted(self.accepts - {self.sample_name, 'timestep'})}",
            )
        added = dict(inputs.pop("added_cond_kwargs", None) or {})
        added.update({k: inputs.pop(k) for k in unknown})
        return {**inputs, "added_cond_kwargs": added}


def network_model(
    network: nn.Module,
    scheduler: SchedulerMixin | Mapping[str, Any],
    *,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    mu: float | None = None,
    timestep: Callable[[Tensor], Tensor] | None = None,
    fixed: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """A fewstep ``Model`` of a diffusers UNet or transformer with its pipeline's scheduler.

    Args:
        network: the pipeline's ``unet`` or ``transformer`` (in eval mode; compiled with
            ``torch.compile`` or not).
        scheduler: the pipeline's scheduler, or its config: the schedule, prediction type and
            thresholding come from it, as ``FewstepScheduler.from_config`` reads them.
        guidance_scale, guidance_rescale: classifier-free guidance as the pipeline applies it
            (pass ``uncond=`` to sampling and tuning: the negative prompt's inputs).
        mu: the dynamic shift of flow pipelines (shift = e^mu), from the image size.
        timestep: maps the pipeline's timestep (float32, one per sample) to what the network
            takes, where the pipeline changes it; Flux-like networks
            (``TIMESTEP_PER_THOUSAND``) get t / 1000 unless this is given.
        fixed: inputs the same for every sample and call, not split by batch (Flux's
            ``img_ids`` and ``txt_ids``, ``joint_attention_kwargs``).
        dtype: the dtype the network takes x in; by default the network's own.

    Conditions (``cond``/``uncond`` of sampling and tuning) are the network's keyword
    arguments with a batch axis (``encoder_hidden_states``, ``pooled_projections``,
    ``class_labels``); on a UNet with ``added_cond_kwargs`` (SDXL), the keys its forward
    does not take (``text_embeds``, ``time_ids``) go there.
    """
    if not isinstance(network, nn.Module):
        raise ArgumentError(
            "network", f"expected a torch module, got {type(network).__name__}", "pipe.unet"
        )
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise ArgumentError(
            "scheduler", f"expected a diffusers scheduler or its config, got {type(scheduler)}"
        )
    if fixed is not None and not isinstance(fixed, Mapping):
        raise ArgumentError("fixed", f"expected a mapping of inputs, got {type(fixed).__name__}")
    translator = FewstepScheduler.from_config(config, tuned=None)
    if timestep is None and type(_unwrapped(network)).__name__ in TIMESTEP_PER_THOUSAND:
        timestep = _per_thousand
    fn = NetworkCall(network, translator.time_scale, timestep, fixed or {})
    if dtype is None:
        dtype = getattr(network, "dtype", None)
    return translator.model(
        fn,
        mu=mu,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        dtype=dtype,
    )
