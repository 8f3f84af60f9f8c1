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
