"""The peers on fewstep's problems: k-diffusion's samplers and diffusers' schedulers, driven
with exactly matched inputs (same model, same starting state, counted model calls).

Both are optional (``pip install fewstep[peers]`` and ``k-diffusion --no-deps``); every
function raises ``PeerUnavailable`` when its peer is missing. ``import k_diffusion`` pulls
torchvision through unrelated modules, so its ``sampling.py`` is loaded by file path.

Conventions, so that a peer's output is comparable with ``fewstep.sample``:
- k-diffusion integrates in the variance-exploding space x / alpha with sigma / alpha for
  VP and EDM models, and (as ComfyUI runs flow models) directly in x with sigma = t for
  rectified flow; its grid is the nonzero sigmas plus a final 0, its last step returns the
  data prediction at the smallest sigma;
- diffusers' schedulers run their own pipeline loop: ``scale_model_input``, the model called
  with the scheduler's timestep (divided by ``num_train_timesteps`` for flow models), then
  ``step``; their final sigma is 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import FewstepError
from ..model import Model
from ..schedules import FlowSchedule, NoiseSchedule, VPSchedule, as_float64


class PeerUnavailable(FewstepError, ImportError):
    """A peer library is not installed."""


# -- k-diffusion -----------------------------------------------------------------------------


def kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module, loaded by path with the one ``utils`` helper it uses."""
    name = "_fewstep_kdiffusion.sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    package = types.ModuleType("_fewstep_kdiffusion")
    package.__path__ = []
    utils = types.ModuleType("_fewstep_kdiffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"_fewstep_kdiffusion": package, "_fewstep_kdiffusion.utils": utils})
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except ImportError as err:
        del sys.modules[name]
        raise PeerUnavailable(f"k-diffusion's sampling.py cannot be loaded: {err}") from err
    return module


#: deterministic k-diffusion samplers: name -> (function, fixed keyword arguments, calls per
#: nonzero sigma except the last: 1 for one-call samplers, 2 for two-call ones)
KDIFFUSION_SAMPLERS: dict[str, tuple[str, dict[str, Any], int]] = {
    "euler": ("sample_euler", {}, 1),
    "heun": ("sample_heun", {}, 2),
    "dpm_2": ("sample_dpm_2", {}, 2),
    "lms": ("sample_lms", {}, 1),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, 1),
    "dpmpp_2s": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, 2),
    "dpmpp_2m_heun": ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 1),
    "dpmpp_3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}, 1),
}


#: stochastic k-diffusion samplers (same layout as KDIFFUSION_SAMPLERS)
KDIFFUSION_STOCHASTIC: dict[str, tuple[str, dict[str, Any], int]] = {
    "euler_ancestral": ("sample_euler_ancestral", {}, 1),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, 2),
    "dpmpp_sde": ("sample_dpmpp_sde", {}, 2),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, 1),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, 1),
}


def classical_space(schedule: NoiseSchedule) -> str:
    """'ve' (x / alpha against sigma / alpha) or 'flow' (x against t)."""
    return "flow" if schedule.classical_k == -1.0 else "ve"


def kdiffusion_sigmas(schedule: NoiseSchedule, times: Tensor) -> Tensor:
    """k-diffusion's sigmas for native ``times``: the nonzero ones, then a final 0."""
    t = as_float64(times)
    sig = t.clone() if classical_space(schedule) == "flow" else schedule.edm_sigma(t)
    return torch.cat([sig, sig.new_zeros(1)])


def kdiffusion_denoiser(model: Model) -> Callable[[Tensor, Tensor], Tensor]:
    """A k-diffusion denoiser D(x, sigma) from a fewstep model."""
    schedule = model.schedule
    flow = classical_space(schedule) == "flow"

    lo = schedule.t_min if flow else float(schedule.edm_sigma(schedule.t_min))
    hi = schedule.t_max if flow else float(schedule.edm_sigma(schedule.t_max))

    def denoiser(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        s = as_float64(sigma).flatten()
        if bool(torch.any(s < lo * (1 - 1e-4))) or bool(torch.any(s > hi * (1 + 1e-4))):
            raise FewstepError(f"k-diffusion asked for sigma {s.tolist()} outside [{lo}, {hi}]")
        s = s.clamp(lo, hi)  # float32 grids round a hair past the ends
        t = s if flow else schedule.t_of_edm_sigma(s)
        scale = torch.ones_like(t) if flow else schedule.alpha(t)
        x_in = x * scale.to(x).view(-1, *([1] * (x.ndim - 1)))
        return model.predict(x_in, t, cond=cond or None).data

    return denoiser


def run_kdiffusion(
    name: str, model: Model, noise: Tensor, sigmas: Tensor, **options: Any
) -> Tensor:
    """k-diffusion's sampler ``name`` over ``sigmas`` (with their final 0), started from the
    state fewstep starts from. Returns the data samples."""
    sampling = kdiffusion_sampling()
    function, fixed, _ = {**KDIFFUSION_SAMPLERS, **KDIFFUSION_STOCHASTIC}[name]
    schedule = model.schedule
    s0 = float(sigmas[0])
    if classical_space(schedule) == "flow":
        x = noise.clone()
    else:
        t0 = float(schedule.t_of_edm_sigma(s0))
        x = noise * schedule.initial_scale(t0) / float(schedule.alpha(t0))
    sigmas = sigmas.to(device=noise.device, dtype=noise.dtype)
    return getattr(sampling, function)(
        kdiffusion_denoiser(model), x, sigmas, disable=True, **{**fixed, **options}
    )


def kdiffusion_calls(name: str, n_sigmas: int) -> int:
    """Model calls k-diffusion's sampler makes with ``n_sigmas`` nonzero sigmas."""
    per = {**KDIFFUSION_SAMPLERS, **KDIFFUSION_STOCHASTIC}[name][2]
    return per * (n_sigmas - 1) + 1


def kdiffusion_spacings(schedule: NoiseSchedule, n: int) -> dict[str, Tensor]:
    """k-diffusion's grids (nonzero sigmas, in its space) for a model of this schedule:
    its sigma functions, plus the model's time-uniform grid (A1111/ComfyUI's "normal")."""
    sampling = kdiffusion_sampling()
    if classical_space(schedule) == "flow":
        lo, hi = schedule.t_min, schedule.t_max
        shift = getattr(schedule, "shift", 1.0)
        u = torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1]
        simple = shift * u / (1 + (shift - 1) * u)
        out = {"simple": simple}
    else:
        lo, hi = (float(schedule.edm_sigma(t)) for t in (schedule.t_min, schedule.t_max))
        uniform = torch.linspace(schedule.t_max, schedule.t_min, n, dtype=torch.float64)
        out = {"normal": schedule.edm_sigma(uniform)}
    ays = ays_sigmas(schedule, n)
    if ays is not None:
        out["ays"] = ays
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion's ramps are float32 otherwise, and
    try:  # their rounded end points fall outside the schedule's range
        out["karras"] = sampling.get_sigmas_karras(n, lo, hi)[:-1]
        out["exponential"] = sampling.get_sigmas_exponential(n, lo, hi)[:-1]
        out["polyexponential"] = sampling.get_sigmas_polyexponential(n, lo, hi, rho=2.0)[:-1]
    finally:
        torch.set_default_dtype(default)
    return out


def ays_sigmas(schedule: NoiseSchedule, n: int) -> Tensor | None:
    """Align Your Steps' Stable Diffusion 1.5 sigmas (the table diffusers ships), the final 0
    replaced by the schedule's smallest sigma as ComfyUI does, interpolated log-linearly to
    n values (the AYS paper's rule); None for non-VP schedules or without diffusers."""
    if not isinstance(schedule, VPSchedule):
        return None
    try:
        table = list(
            importlib.import_module("diffusers.schedulers").AysSchedules["StableDiffusionSigmas"]
        )
    except (ImportError, AttributeError, KeyError):
        return None
    lo, hi = (float(schedule.edm_sigma(t)) for t in (schedule.t_min, schedule.t_max))
    values = np.clip(np.asarray([*table[:-1], lo], dtype=np.float64), lo, hi)
    xs, new = np.linspace(0, 1, len(values)), np.linspace(0, 1, n)
    return torch.from_numpy(np.exp(np.interp(new, xs, np.log(values))))


# -- diffusers -------------------------------------------------------------------------------


def diffusers_module() -> types.ModuleType:
    try:
        return importlib.import_module("diffusers")
    except ImportError as err:
        raise PeerUnavailable("diffusers is not installed (pip install fewstep[peers])") from err


_PREDICTION_TYPES = {
    "epsilon": "epsilon",
    "sample": "sample",
    "v": "v_prediction",
    "flow": "flow_prediction",
}


def diffusers_config(schedule: NoiseSchedule, prediction: str) -> dict[str, Any]:
    """The scheduler config that describes a fewstep schedule and parameterization."""
    if isinstance(schedule, VPSchedule):
        ac = schedule.alphas_cumprod.numpy()
        betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
        return {
            "num_train_timesteps": schedule.num_train_timesteps,
            "trained_betas": betas.tolist(),
            "prediction_type": _PREDICTION_TYPES[prediction],
        }
    if isinstance(schedule, FlowSchedule):
        return {"num_train_timesteps": 1000, "prediction_type": "flow_prediction"}
    raise PeerUnavailable(f"no diffusers configuration for {schedule!r} in this harness")


def diffusers_scheduler(cls_name: str, schedule: NoiseSchedule, prediction: str, **config: Any):
    """A diffusers scheduler of class ``cls_name`` for this schedule, with extra ``config``."""
    cls = getattr(diffusers_module(), cls_name)
    base = diffusers_config(schedule, prediction)
    if isinstance(schedule, FlowSchedule):
        if cls_name.startswith("FlowMatch"):
            base = {"num_train_timesteps": 1000, "shift": schedule.shift}
        else:
            base = {**base, "use_flow_sigmas": True, "flow_shift": schedule.shift}
    accepted = set(cls._get_init_keys(cls)) if hasattr(cls, "_get_init_keys") else None
    merged = {**base, **config}
    if accepted is not None:
        merged = {k: v for k, v in merged.items() if k in accepted}
    return cls(**merged)


def run_diffusers(
    scheduler, model: Model, noise: Tensor, steps: int | None = None, **step_options: Any
) -> tuple[Tensor, int]:
    """The diffusers pipeline loop with ``scheduler`` (``set_timesteps(steps)`` first unless
    steps is None, for a scheduler whose grid was already set); ``step_options`` go to every
    ``step`` call (e.g. DDIM's ``eta``). Returns (samples, calls)."""
    if steps is not None:
        scheduler.set_timesteps(steps)
    flow = isinstance(model.schedule, FlowSchedule)
    n_train = scheduler.config.num_train_timesteps
    x = noise * float(getattr(scheduler, "init_noise_sigma", 1.0))
    calls = 0
    for t in scheduler.timesteps:
        scale = getattr(scheduler, "scale_model_input", None)
        x_in = x if scale is None else scale(x, t)
        t_native = torch.full(
            (x.shape[0],), float(t) / n_train if flow else float(t), dtype=torch.float64
        )
        out = model.fn(x_in, t_native)
        calls += 1
        x = scheduler.step(out, t, x, return_dict=False, **step_options)[0]
    return x, calls


#: diffusers' deterministic schedulers for VP and flow models: name -> (class, config).
DIFFUSERS_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_2m_heun": ("DPMSolverMultistepScheduler", {"solver_order": 2, "solver_type": "heun"}),
    "dpm_2m": (
        "DPMSolverMultistepScheduler",  # noise prediction refuses a final sigma of 0
        {"solver_order": 2, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "dpmpp_3s": ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    "deis_2": ("DEISMultistepScheduler", {"solver_order": 2}),
    "deis_3": ("DEISMultistepScheduler", {"solver_order": 3}),
    "unipc_2": ("UniPCMultistepScheduler", {"solver_order": 2}),
    "unipc_3": ("UniPCMultistepScheduler", {"solver_order": 3}),
    "unipc_3_bh1": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
}

#: which diffusers samplers apply to flow models (through use_flow_sigmas or their own class)
DIFFUSERS_FLOW_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
    **{
        k: v
        for k, v in DIFFUSERS_SAMPLERS.items()
        if v[0].split("Scheduler")[0]
        in {"DPMSolverMultistep", "DPMSolverSinglestep", "DEISMultistep", "UniPCMultistep"}
    },
}

#: diffusers' stochastic schedulers: name -> (class, config, step options)
DIFFUSERS_STOCHASTIC: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}, {}),
    "ddim_eta1": ("DDIMScheduler", {"set_alpha_to_one": True}, {"eta": 1.0}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "kdpm2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}, {}),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        {},
    ),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {},
    ),
    "dpmpp_2s_sde": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        {},
    ),
    "sa_solver": ("SASolverScheduler", {}, {}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}, {}),
}
#: which of them apply to flow models (through use_flow_sigmas or their own class)
DIFFUSERS_FLOW_STOCHASTIC: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "flow_euler_stochastic": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, {}),
    **{
        k: v
        for k, v in DIFFUSERS_STOCHASTIC.items()
        if k in {"dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver"}
    },
}

#: diffusers' spacing options, as config entries
DIFFUSERS_SPACINGS: dict[str, dict[str, Any]] = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading", "steps_offset": 1},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}


def diffusers_calls_per_step(cls_name: str) -> int:
    """Model calls per ``set_timesteps`` step: 2 for Heun and KDPM2, else 1."""
    return (
        2
        if cls_name
        in {"HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "FlowMatchHeunDiscreteScheduler"}
        else 1
    )
