"""fewstep's solvers with k-diffusion's calling convention, for k-diffusion-style loops
(ComfyUI, A1111 and scripts built on k-diffusion).

    x = fewstep.k.sample_dpmpp_2m(denoiser, x, sigmas, extra_args={"cond": c})

``denoiser(x, sigma, **extra_args)`` returns the data prediction for a state x = x0 + sigma
eps; ``x`` is the starting state (noise * sigmas[0]); ``sigmas`` are the noise levels,
decreasing, ending with 0 as k-diffusion's helpers make them. Every solver of
``fewstep.solvers.SOLVERS`` has its ``sample_<name>`` here; the nonzero sigmas are the grid
(a singlestep solver's inner stages are grid points, and the model call count follows from
the solver and the number of sigmas). The result equals ``fewstep.sample`` on the same grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .defaults import auto
from .errors import ArgumentError
from .model import Model
from .noise import IndependentNoise, sample_seeds
from .sampling import plan, run
from .schedules import EDMSchedule
from .solvers import SOLVERS, get_solver
from .spacing import Karras, LogSNR, Spacing, Table, Warped

Denoiser = Callable[..., Tensor]


def _schedule(sigmas: Tensor) -> tuple[EDMSchedule, list[float]]:
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    grid = s[s > 0].tolist()
    if len(grid) < 1 or any(b >= a for a, b in itertools.pairwise(grid)):
        raise ArgumentError("sigmas", "need decreasing positive noise levels (then 0)")
    return EDMSchedule(grid[-1], grid[0]) if len(grid) > 1 else EDMSchedule(
        grid[0] / 2, grid[0]
    ), grid


def sample(
    solver: str,
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    seed: int | Sequence[int] | None = None,
    noise_sampler: Callable[[float, float], Tensor] | None = None,
    **options: Any,
) -> Tensor:
    """Run fewstep's ``solver`` on a k-diffusion denoiser over ``sigmas``. Stochastic solvers
    take per-sample ``seed`` (fewstep's reproducible noise) or k-diffusion's
    ``noise_sampler(sigma, sigma_next)``."""
    schedule, grid = _schedule(sigmas)
    fewstep_model = Model(lambda x_, t, **c: model(x_, t.to(x_.dtype), **c), schedule, "sample")
    if solver == "auto":
        name, auto_options, _ = auto(schedule, len(grid))
        solver, options = name, {**auto_options, **options}
    solver_obj = get_solver(solver, **options)
    _, _, program = plan(fewstep_model, solver_obj, solver_obj.nfe_for_points(len(grid)), grid)
    noise = None
    if program.stochastic:
        if noise_sampler is not None:
            noise = lambda draw, like: noise_sampler(draw.tau0, draw.tau1).to(like)  # noqa: E731
        else:
            base = int(torch.randint(0, 2**62, ())) if seed is None else seed
            noise = IndependentNoise(
                sample_seeds(base, x.shape[0]) if isinstance(base, int) else base
            )
    elif seed is not None or noise_sampler is not None:
        raise ArgumentError("seed", f"{solver!r} is deterministic and draws no noise")
    landed = []

    def on_land(index: int, state: Tensor) -> None:
        landed.append(index)
        if callback is not None:
            callback(
                {"x": state, "i": len(landed) - 1, "sigma": grid[index], "sigma_hat": grid[index]}
            )

    # k-diffusion's x is the starting state itself (noise * sigmas[0]), as fewstep's is for
    # a variance-exploding schedule
    return run(
        fewstep_model,
        program,
        x,
        cond=extra_args,
        progress=not disable,
        on_land=on_land,
        noise=noise,
    )


def _make(name: str):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample(name, model, x, sigmas, extra_args, callback, disable, **options)

    sampler.__name__ = f"sample_{name}"
    sampler.__doc__ = f"fewstep's ``{name}`` with k-diffusion's signature (see ``fewstep.k``)."
    return sampler


for _name in [*SOLVERS, "auto"]:
    if not getattr(SOLVERS.get(_name, (None,))[0], "adaptive", False):
        globals()[f"sample_{_name}"] = _make(_name)


# -- sigma schedules (k-diffusion's convention: n noise levels, then a final 0) -------------


def _sigmas(spacing: Spacing, n: int, sigma_min: float, sigma_max: float, device="cpu") -> Tensor:
    levels = spacing.times(EDMSchedule(sigma_min, sigma_max), n)
    return torch.cat([levels, levels.new_zeros(1)]).to(device=device, dtype=torch.float32)


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu"
) -> Tensor:
    """Karras et al.'s rho-warped ramp."""
    return _sigmas(Karras(rho), n, sigma_min, sigma_max, device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device="cpu") -> Tensor:
    """Uniform in log sigma (uniform log-SNR for a variance-exploding model)."""
    return _sigmas(LogSNR(), n, sigma_min, sigma_max, device)


get_sigmas_logsnr = get_sigmas_exponential


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device="cpu"
) -> Tensor:
    """k-diffusion's polynomial in log sigma: a Beta(1, rho) warp of the log-sigma ramp."""
    return _sigmas(Warped(1.0, rho), n, sigma_min, sigma_max, device)


def get_sigmas_table(table: Sequence[float], n: int, device="cpu") -> Tensor:
    """A tabulated schedule (e.g. Align Your Steps) interpolated log-linearly to n levels."""
    values = [float(v) for v in table if v > 0]
    return _sigmas(Table(tuple(values)), n, min(values), max(values), device)


def get_sigmas_auto(n: int, sigma_min: float, sigma_max: float, device="cpu") -> Tensor:
    """The grid of ``sample_auto`` for n model calls (fewstep's calibrated spacing for
    variance-exploding models)."""
    return _sigmas(auto(EDMSchedule(sigma_min, sigma_max), n)[2], n, sigma_min, sigma_max, device)


__all__ = [name for name in globals() if name.startswith(("sample_", "get_sigmas_"))] + ["sample"]
