"""Per-sample seeded noise: sample i's noise depends only on its own seed, never on the
batch it is drawn in. Noise is drawn on the CPU, so a seed gives the same numbers on any
device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError

SeedLike = int | Sequence[int]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence hashing): independent
    streams for (base seed, sample index), (sample seed, step), ..."""
    if any(not isinstance(k, (int, np.integer)) or k < 0 for k in keys):
        raise ArgumentError("seed", f"seeds must be non-negative integers, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def sample_seeds(seed: SeedLike, batch: int) -> list[int]:
    """One seed per sample: an int seed s gives sample i the seed derive_seed(s, i); a
    sequence is used as given (its length must equal the batch)."""
    if isinstance(seed, (int, np.integer)):
        return [derive_seed(int(seed), i) for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ArgumentError(
            "seed", f"got {len(seeds)} seeds for a batch of {batch}", "one per sample"
        )
    for s in seeds:
        derive_seed(s)  # validates
    return seeds


def randn(
    shape: Sequence[int],
    seed: SeedLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    stream: int | None = None,
    draw_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` = (batch, ...), one CPU generator per sample.

    ``stream`` separates independent draws for the same sample (e.g. the step index of an
    SDE solver); ``draw_dtype`` is the precision the numbers are drawn in (float32 or float64).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] < 1:
        raise ArgumentError("shape", f"needs a batch dimension, got {shape}")
    out = torch.empty(shape, dtype=draw_dtype)
    g = torch.Generator()
    for i, s in enumerate(sample_seeds(seed, shape[0])):
        g.manual_seed(derive_seed(s) if stream is None else derive_seed(s, stream))
        out[i] = torch.randn(shape[1:], generator=g, dtype=draw_dtype)
    return out.to(device=device, dtype=dtype)


class IndependentNoise:
    """Draw k of sample i comes from the generator seeded by derive_seed(seed_i, k): the
    same on any device and in any batch."""

    def __init__(self, seeds: Sequence[int], dtype: torch.dtype = torch.float32):
        self.seeds = list(seeds)
        self.dtype = dtype

    def __call__(self, draw, like: Tensor) -> Tensor:
        z = torch.empty(like.shape, dtype=self.dtype)
        g = torch.Generator()
        for i, s in enumerate(self.seeds):
            g.manual_seed(derive_seed(s, draw.index + 1))
            z[i] = torch.randn(like.shape[1:], generator=g, dtype=self.dtype)
        return z.to(device=like.device, dtype=like.dtype)


class BrownianNoise:
    """Brownian-tree noise (torchsde): the draw for the step from noise level tau0 to tau1
    is the normalised increment (W(tau1) - W(tau0)) / sqrt|tau1 - tau0| of one Brownian
    path per sample, so a seed gives consistent paths whatever the step count (what
    k-diffusion's BrownianTreeNoiseSampler gives)."""

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        tau_min: float,
        tau_max: float,
        dtype: torch.dtype = torch.float32,
    ):
        try:
            import torchsde
        except ImportError as err:  # pragma: no cover - torchsde is a test extra
            raise ArgumentError(
                "noise", "the Brownian tree needs torchsde", "pip install torchsde"
            ) from err
        self.lo, self.hi = float(tau_min), float(tau_max)
        self.dtype = dtype
        w0 = torch.zeros(tuple(shape[1:]), dtype=torch.float64)
        self.trees = [
            torchsde.BrownianTree(self.lo, w0, self.hi, entropy=derive_seed(s, 0), tol=1e-6)
            for s in seeds
        ]

    def __call__(self, draw, like: Tensor) -> Tensor:
        t0 = min(max(min(draw.tau0, draw.tau1), self.lo), self.hi)
        t1 = min(max(max(draw.tau0, draw.tau1), self.lo), self.hi)
        if t1 <= t0:
            raise ArgumentError("noise", f"an empty Brownian interval [{t0}, {t1}]")
        z = torch.stack([tree(t0, t1) for tree in self.trees]) / (t1 - t0) ** 0.5
        return z.to(device=like.device, dtype=like.dtype)
