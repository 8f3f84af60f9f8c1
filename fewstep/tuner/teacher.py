"""Teacher trajectories: high-accuracy solutions of the model from the calibration noises.

A teacher is computed once per (model, noises) and reused for every budget: its states on a
fine grid feed the grid search, its end point is the target every tuned sampler is fitted
to. On an exact-reference problem the target can be the exact ODE solution instead.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..digest import content_digest
from ..generation import Sampler, sample_batched
from ..model import Model
from ..sampling import StepInfo
from ..spacing import Warped


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
        """UniPC-3 (true third order: singlestep warm-up, no lower-order final step) with
        (points - 1) * refine + 1 model calls on a log-sigma-uniform grid, keeping every
        refine-th state (points - 1 of them: the warm-up's extra calls take grid points),
        by generation's batched runner (``batch_size`` bounds the noises a run holds; the
        kept states are written in place as the solve lands on them, the others never
        held); ``target`` overrides the end point (e.g. an exact ODE solution)."""
        start = time.perf_counter()
        before = model.nfe
        n = (points - 1) * refine + 1
        kept: dict[str, Any] = {"times": {}}

        def keep(rows: slice, info: StepInfo) -> None:
            if info.index % refine:
                return
            if "states" not in kept:
                shape = (points, noise.shape[0], *info.x.shape[1:])
                kept["states"] = info.x.new_empty(shape)
            kept["states"][info.index // refine, rows] = info.x
            kept["times"][info.index // refine] = info.t

        with torch.no_grad():
            solver = Sampler(
                "unipc",
                n,
                Warped(),
                {"order": 3, "warmup": "singlestep", "lower_order_final": False},
            )
            samples = sample_batched(
                model,
                noise,
                solver,
                cond=cond,
                uncond=uncond,
                batch_size=batch_size,
                callback=keep,
            )
        landed = len(kept["times"])  # every refine-th state the solve lands on
        return cls(
            noise=noise,
            times=torch.tensor([kept["times"][k] for k in range(landed)], dtype=torch.float64),
            states=kept["states"][:landed],
            target=samples if target is None else target.to(samples),
            calls=model.nfe - before,
            seconds=time.perf_counter() - start,
            cond=cond,
            uncond=uncond,
        )


class TeacherCache:
    """Teachers by what they depend on, so that tuning several budgets solves once.

    Bounded: the least recently used go first while the teachers' states and targets exceed
    ``max_bytes`` (the newest is always kept). The network is held weakly: its teachers go
    at the cache's next use after it is garbage collected.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, Teacher] = OrderedDict()
        self._watched: set[int] = set()  # ids of networks with a finalizer registered
        self._held: dict[int, Any] = {}  # networks that cannot be weakly referenced
        self._dead: set[int] = set()  # collected networks whose entries are still here

    def key(self, model: Model, noise: Tensor, cond=None, uncond=None) -> tuple:
        """What a teacher depends on: the network (by id, forgotten when it is collected),
        everything the model applies around it (guidance, thresholding, dtype), the
        schedule and the inputs by content."""
        self._purge()
        return (
            self._network(model.fn),
            model.prediction,
            model.guidance,
            repr(model.thresholding),
            model.dtype,
            repr(model.schedule.config()),
            content_digest(noise),
            content_digest(cond),
            content_digest(uncond),
        )

    def __contains__(self, key: tuple) -> bool:
        self._purge()
        return key in self._entries

    def __len__(self) -> int:
        self._purge()
        return len(self._entries)

    def get(self, key: tuple, solve: Callable[[], Teacher]) -> Teacher:
        """The cached teacher for ``key``, else ``solve()``'s, cached."""
        self._purge()
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        teacher = self._entries[key] = solve()
        while len(self._entries) > 1 and self._bytes() > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return teacher

    def clear(self) -> None:
        """Forget every teacher (and the networks held because they have no weak reference)."""
        self._entries.clear()
        self._held.clear()

    def _network(self, fn) -> int:
        ident = id(fn)
        if ident not in self._watched and ident not in self._held:
            try:
                weakref.finalize(fn, self._dead.add, ident)
                self._watched.add(ident)
            except TypeError:  # no weak reference (a builtin): held, so its id is not reused
                self._held[ident] = fn
        return ident

    def _bytes(self) -> int:
        return sum(
            t.states.nbytes + t.target.nbytes + t.noise.nbytes for t in self._entries.values()
        )

    def _drop(self, key: tuple) -> None:
        del self._entries[key]
        if not any(k[0] == key[0] for k in self._entries):
            self._held.pop(key[0], None)

    def _purge(self) -> None:
        while self._dead:
            ident = self._dead.pop()
            self._watched.discard(ident)
            for key in [k for k in self._entries if k[0] == ident]:
                del self._entries[key]
