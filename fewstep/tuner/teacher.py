"""Teacher trajectories: high-accuracy solutions of the model from the calibration noises.

A teacher is computed once per (model, noises) and reused for every budget: its states on a
fine grid feed the grid search, its end point is the target every tuned sampler is fitted
to. On an exact-reference problem the target can be the exact ODE solution instead.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..generation import Sampler, sample_batched
from ..model import Model
from ..spacing import Warped


def content_digest(value) -> str:
    """A digest of noises, targets or conditioning inputs by content, for cache keys (tensors
    by their bytes, shape and dtype, any dtype; mappings item by item; else their repr)."""
    h = hashlib.sha1()
    if isinstance(value, Tensor):
        h.update(repr((tuple(value.shape), value.dtype)).encode())
        h.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        for k in sorted(value, key=str):
            h.update(repr(k).encode() + content_digest(value[k]).encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


@dataclass
class Teacher:
    """States of a high-accuracy solve on a fine grid, and its final data prediction."""

    noise: Tensor
    times: Tensor  # (T,) native times, decreasing from t_max to t_min
    states: Tensor  # (T, batch, ...) the solution at those times
    target: Tensor  # (batch, ...) the data prediction at the end: what tuning fits
    calls: int
    seconds: float
    cond: Mapping[str, Any] | None = None
    uncond: Mapping[str, Any] | None = None
    # the grid search's step costs, per target (fewstep.tuner.grid.step_costs): copies made
    # with dataclasses.replace (another target) share this dict, so every budget reuses them
    costs: dict = field(default_factory=dict, repr=False, compare=False)

    def start(self, schedule) -> Tensor:
        """The float64 starting state of every sampler fitted to this teacher."""
        return self.noise.to(torch.float64) * schedule.initial_scale(schedule.t_max)

    def label(self) -> tuple[str, Tensor] | None:
        """(key, labels) when the condition holds one integer label per sample (a
        class-conditional model), else None."""
        batch = self.target.shape[0]
        labelled = [
            (key, v)
            for key, v in (self.cond or {}).items()
            if isinstance(v, Tensor) and v.shape == (batch,) and not v.is_floating_point()
        ]
        return labelled[0] if len(labelled) == 1 else None

    @classmethod
    def solve(
        cls,
        model: Model,
        noise: Tensor,
        *,
        points: int = 160,
        refine: int = 3,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        target: Tensor | None = None,
        batch_size: int | None = None,
    ) -> Teacher:
        """UniPC-3 (true third order: singlestep warm-up, no lower-order final step) on a
        log-sigma-uniform grid of ``points`` states, each step subdivided ``refine`` times,
        by generation's batched runner (``batch_size`` bounds memory); ``target`` overrides
        the end point (e.g. an exact ODE solution)."""
        start = time.perf_counter()
        before = model.nfe
        n = (points - 1) * refine + 1
        with torch.no_grad():
            solver = Sampler(
                "unipc",
                n,
                Warped(),
                {"order": 3, "warmup": "singlestep", "lower_order_final": False},
            )
            traj = sample_batched(
                model,
                noise,
                solver,
                cond=cond,
                uncond=uncond,
                batch_size=batch_size,
                trajectory=True,
            )
        keep = list(range(0, len(traj.states), refine))
        states = torch.stack([traj.states[k] for k in keep])
        return cls(
            noise=noise,
            times=traj.times[keep],
            states=states,
            target=traj.samples if target is None else target.to(traj.samples),
            calls=model.nfe - before,
            seconds=time.perf_counter() - start,
            cond=cond,
            uncond=uncond,
        )
