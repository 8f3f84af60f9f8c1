"""Per-sample seeds: noise depends on a sample's seed only, never on the batch."""

import numpy as np
import pytest
import torch

import fewstep
from fewstep.errors import ArgumentError
from fewstep.noise import derive_seed, derive_seeds, sample_seeds


def test_sample_noise_does_not_depend_on_batch_size_or_position():
    seeds = [11, 22, 33, 44, 55]
    batch = fewstep.randn((5, 3, 4), seeds)
    for i, s in enumerate(seeds):
        alone = fewstep.randn((1, 3, 4), [s])
        assert torch.equal(alone[0], batch[i])
    reordered = fewstep.randn((2, 3, 4), [seeds[3], seeds[1]])
    assert torch.equal(reordered[0], batch[3]) and torch.equal(reordered[1], batch[1])


def test_int_seed_gives_each_index_its_own_stream():
    big = fewstep.randn((8, 5), 123)
    small = fewstep.randn((3, 5), 123)
    assert torch.equal(big[:3], small)
    assert not torch.equal(big[0], big[1])
    assert sample_seeds(123, 2) == [derive_seed(123, 0), derive_seed(123, 1)]


def test_streams_and_dtypes():
    a = fewstep.randn((2, 4), [1, 2], stream=0)
    b = fewstep.randn((2, 4), [1, 2], stream=1)
    assert not torch.equal(a, b)
    d = fewstep.randn((2, 4), [1, 2], dtype=torch.float64, draw_dtype=torch.float64)
    assert d.dtype == torch.float64


def test_bad_seeds():
    with pytest.raises(ArgumentError, match="seed"):
        fewstep.randn((3, 2), [1, 2])
    with pytest.raises(ArgumentError, match="seed"):
        fewstep.randn((1, 2), [-1])


def test_batched_seed_hash_equals_numpy_seed_sequence():
    """derive_seeds hashes a batch in array arithmetic: every row must give what numpy's
    SeedSequence gives, for keys of one and two 32-bit words and more than four words."""

    def numpy_seed(*keys):
        state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
        return int(state[0] >> np.uint64(1))

    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 5):
        small = rng.integers(0, 2**32, (300, k), dtype=np.uint64)
        large = rng.integers(2**32, 2**63, (300, k), dtype=np.uint64)
        keys = np.where(rng.random((300, k)) < 0.5, small, large)
        keys[0] = 0
        keys[1] = 2**32 - 1
        keys[2] = 2**32
        assert derive_seeds(keys).tolist() == [numpy_seed(*row) for row in keys.tolist()]
    assert derive_seed(2**64 - 1, 3) == numpy_seed(2**64 - 1, 3)
    with pytest.raises(ArgumentError, match="seed"):
        derive_seed(2**64)
