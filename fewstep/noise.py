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


# numpy's SeedSequence hash (O'Neill's seed_seq_fe: 4-word pool, 32-bit mixing), in
# numpy array arithmetic so a batch's seeds are hashed at once: per-sample per-step seeds
# took over half of a 1500-sample SDE run when hashed one SeedSequence at a time.
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK = 0xFFFFFFFF


class _Hash:
    """SeedSequence's hashmix: each call advances one multiplier shared by all rows."""

    def __init__(self, init: int, mult: int):
        self.const, self.mult = init, mult

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * self.mult) & _MASK
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return r ^ (r >> np.uint32(16))


def _hash_rows(words: list[np.ndarray]) -> np.ndarray:
    """``SeedSequence(entropy).generate_state(1, uint64)[0] >> 1`` for rows whose entropy is
    the uint32 columns ``words`` (every row the same length)."""
    hashmix = _Hash(_INIT_A, _MULT_A)
    zero = np.zeros_like(words[0])
    pool = [hashmix(words[i] if i < len(words) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for word in words[_POOL:]:
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], hashmix(word))
    out = _Hash(_INIT_B, _MULT_B)
    low, high = out(pool[0]), out(pool[1])
    return ((high.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)) >> np.uint64(1)


def derive_seeds(keys: np.ndarray) -> np.ndarray:
    """``derive_seed(*row)`` for every row of a (n, k) array of non-negative integers below
    2**64, as a uint64 array (n,): the same numbers, hashed for the whole batch at once."""
    keys = np.asarray(keys)
    if keys.ndim != 2 or keys.shape[1] < 1 or (keys.size and keys.dtype.kind not in "iu"):
        raise ArgumentError("seed", f"need a (n, k) array of integer seeds, got {keys.shape}")
    if keys.size and int(keys.min()) < 0:
        raise ArgumentError("seed", "seeds must be non-negative integers")
    keys = keys.astype(np.uint64)
    # an integer key is one 32-bit word below 2**32 (0 included), two from there up
    wide = keys > np.uint64(_MASK)
    out = np.empty(len(keys), dtype=np.uint64)
    for pattern in np.unique(wide, axis=0):
        rows = np.all(wide == pattern, axis=1)
        words = []
        for column, two in zip(keys[rows].T, pattern, strict=True):
            words.append((column & np.uint64(_MASK)).astype(np.uint32))
            if two:
                words.append((column >> np.uint64(32)).astype(np.uint32))
        out[rows] = _hash_rows(words)
    return out


def _check_seeds(keys: Sequence[int]) -> None:
    if not keys or any(not isinstance(k, (int, np.integer)) or not 0 <= k < 2**64 for k in keys):
        raise ArgumentError("seed", f"seeds must be integers in [0, 2**64), got {keys}")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence hashing): independent
    streams for (base seed, sample index), (sample seed, step), ..."""
    _check_seeds(keys)
    return int(derive_seeds(np.array([keys], dtype=np.uint64))[0])


def sample_seeds(seed: SeedLike, batch: int) -> list[int]:
    """One seed per sample: an int seed s gives sample i the seed derive_seed(s, i); a
    sequence is used as given (its length must equal the batch)."""
    if isinstance(seed, (int, np.integer)):
        _check_seeds([seed])
        keys = np.stack([np.full(batch, int(seed), np.uint64), np.arange(batch, dtype=np.uint64)])
        return derive_seeds(keys.T).tolist()
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ArgumentError(
            "seed", f"got {len(seeds)} seeds for a batch of {batch}", "one per sample"
        )
    _check_seeds(seeds)
    return seeds


def _stream_seeds(seeds: Sequence[int], stream: int | None) -> list[int]:
    """derive_seed(s) or derive_seed(s, stream) for each sample seed s, hashed at once."""
    column = np.array(seeds, dtype=np.uint64)[:, None]
    if stream is not None:
        column = np.hstack([column, np.full_like(column, stream)])
    return derive_seeds(column).tolist()


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
    for i, s in enumerate(_stream_seeds(sample_seeds(seed, shape[0]), stream)):
        g.manual_seed(s)
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
        for i, s in enumerate(_stream_seeds(self.seeds, draw.index + 1)):
            g.manual_seed(s)
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
