"""Digits FID, class accuracy and the teacher distance."""

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

import fewstep
from fewstep import models
from fewstep.errors import ArgumentError
from fewstep.quality import (
    TEACHER_NFE,
    digits_metrics,
    frechet_difference,
    frechet_distance,
    teacher,
    teacher_rmse,
)


@pytest.fixture(scope="module")
def metrics():
    return digits_metrics()


def test_frechet_distance_is_exact_on_an_affine_pair():
    # b = 2 a + 1: C_b = 4 C_a, so the distance is |mu_a - mu_b|^2 + tr(C_a) exactly.
    a = np.random.default_rng(0).normal(size=(500, 6)) @ np.diag([1, 2, 3, 0.5, 1, 1])
    b = 2 * a + 1
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_equals_the_sqrtm_formula_and_takes_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) * 1.5 + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    a[:, 3] = 0.0  # a dead feature: singular covariance, no warning, still finite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(frechet_distance(a[:5], b))
    with pytest.raises(ArgumentError, match="features"):
        frechet_distance(a, b[:, :3])


def test_frechet_difference_interval_separates_a_shift_from_sampling_noise():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(360, 6))
    noise = rng.normal(size=(1000, 6))
    same = noise + rng.normal(size=noise.shape) * 0.05  # another sampler, same distribution
    point, low, high = frechet_difference(same, noise, reference, draws=200)
    assert low < 0 < high and low <= point <= high
    assert frechet_difference(noise, noise, reference, draws=50) == (0.0, 0.0, 0.0)
    shifted = noise + 0.3  # only the mean term moves: |m + 0.3 - r|^2 - |m - r|^2
    exact = 6 * 0.3**2 + 2 * 0.3 * (noise.mean(0) - reference.mean(0)).sum()
    point, low, high = frechet_difference(shifted, noise, reference, draws=200)
    assert 0 < low <= point <= high and point == pytest.approx(exact, rel=1e-9)
    with pytest.raises(ArgumentError, match="b"):
        frechet_difference(noise, noise[:10], reference)
    with pytest.raises(ArgumentError, match="draws"):
        frechet_difference(noise, noise, reference, draws=1)


def test_fid_is_zero_for_identical_sets_and_grows_with_injected_noise(metrics):
    real = metrics.test.images
    scale = np.trace(np.cov(metrics.reference, rowvar=False))
    assert metrics.fid(real) <= 1e-9 * scale
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=g)
    fids = [metrics.fid(real + s * noise) for s in (0.05, 0.2, 0.5, 1.0)]
    assert 0 < fids[0] < fids[1] < fids[2] < fids[3]
    assert fids[-1] > 20 * metrics.floor()  # the real-data floor


def test_the_floor_is_small_and_biased_up_at_small_samples(metrics):
    floor = metrics.floor()
    balanced = metrics.floor(torch.arange(100) % 10)
    assert 0 < floor < balanced
    # Unbalanced class counts move the feature mean: a much larger distance.
    assert metrics.floor(torch.arange(100) % 5) > 2 * balanced
    with pytest.raises(ArgumentError, match="labels"):
        metrics.floor(torch.full((200,), 3))


def test_class_accuracy(metrics):
    test = metrics.test
    assert metrics.accuracy(test.images, test.labels) >= 0.97
    assert metrics.accuracy(test.images, (test.labels + 1) % 10) < 0.05
    with pytest.raises(ArgumentError, match="labels"):
        metrics.accuracy(test.images, test.labels[:5])


def test_samplers_converge_to_the_teacher():
    model = models.load("digits-dit", guidance_scale=2.0)
    y = torch.arange(10)
    kw = {"cond": {"y": y}, "uncond": {"y": torch.full_like(y, 10)}}
    noise = fewstep.randn((10, *model.image_shape), seed=3)
    ref = teacher(model, noise, **kw)
    assert model.nfe == TEACHER_NFE
    assert teacher_rmse(ref, ref) == 0.0
    errors = [
        teacher_rmse(fewstep.sample(model, noise, solver="dpmpp_2m", nfe=n, **kw), ref)
        for n in (4, 8, 16, 32)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 10
