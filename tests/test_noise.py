"""Per-sample seeds: noise depends on a sample's seed only, never on the batch."""

import pytest
import torch

import fewstep
from fewstep.errors import ArgumentError
from fewstep.noise import derive_seed, sample_seeds


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
