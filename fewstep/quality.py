"""Quality of generated digits, for the learned-model case where no exact reference exists.

- ``DigitsMetrics.fid``: the Fréchet distance between Gaussian fits of the shipped
  classifier's penultimate features (64-d) of generated samples and of the held-out test
  digits: FID with the digits classifier in Inception's place. ``floor`` is the same
  distance for real train digits, the value a perfect generator would reach (at the
  generated set's size and class counts: see ``floor``).
- ``DigitsMetrics.accuracy``: how often the classifier reads a class-conditional sample as
  the class it was asked for.
- ``frechet_difference``: one FID minus another with a paired-bootstrap interval, to say
  whether two samplers' FIDs differ by more than the sampling noise.
- ``teacher`` and ``teacher_rmse``: the distance of a sampler's output to a 500-call
  high-order solution of the same ODE from the same noise (the metric DC-Solver and
  DPM-Solver-v3 report on Stable Diffusion): discretization error with the network fixed.

Samples are clipped to [-1, 1] before the classifier sees them, as when saved as images.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError
from .model import Model
from .reference.metrics import rmse
from .sampling import sample

TEACHER_SOLVER = "dpmpp_3m"
TEACHER_NFE = 500


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _float64(features: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(torch.as_tensor(features).double().cpu(), dtype=np.float64)


def frechet_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussian fits of two
    feature sets (n, d), in float64.

    The trace of the matrix root is taken as the sum of square roots of the eigenvalues of
    the symmetric C_a^(1/2) C_b C_a^(1/2), which has the eigenvalues of C_a C_b: the same
    number as ``scipy.linalg.sqrtm(C_a @ C_b).real.trace()``, but exact when a covariance
    is singular (dead ReLU features, fewer samples than features), where sqrtm warns.
    """
    a, b = _float64(a), _float64(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ArgumentError(
            "features", f"need two (n >= 2, d) sets of one width, got {a.shape} and {b.shape}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return max(0.0, float(distance))  # round-off can take identical sets a hair below 0


def frechet_difference(
    a: Tensor | np.ndarray,
    b: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    *,
    draws: int = 500,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``frechet_distance(a, reference) - frechet_distance(b, reference)`` and its 95%
    paired-bootstrap interval (difference, low, high), for two feature sets whose row i
    comes from the same noise (two samplers run on one set of noises).

    Rows of ``a`` and ``b`` are resampled together and the reference independently, so the
    interval holds the sampling error of the generated sets and of the reference: whether
    one FID is below another by more than the noise of a few hundred or thousand samples.
    """
    a, b, reference = _float64(a), _float64(b), _float64(reference)
    if a.shape != b.shape:
        raise ArgumentError("b", f"need one row per row of a, got {b.shape} and {a.shape}")
    if draws < 2:
        raise ArgumentError("draws", f"need at least 2 bootstrap draws, got {draws}")
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(draws):
        rows = rng.integers(len(a), size=len(a))
        ref = reference[rng.integers(len(reference), size=len(reference))]
        differences.append(frechet_distance(a[rows], ref) - frechet_distance(b[rows], ref))
    low, high = np.quantile(differences, [0.025, 0.975])
    point = frechet_distance(a, reference) - frechet_distance(b, reference)
    return point, float(low), float(high)


class DigitsMetrics:
    """The classifier and the held-out digits' features, computed once.

    Args:
        classifier: a network with ``features(x)`` and logits from ``forward(x)``;
            default the shipped ``digits-classifier``.
    """

    def __init__(self, classifier: torch.nn.Module | None = None):
        from .models import load_classifier, load_digits

        self.classifier = load_classifier() if classifier is None else classifier
        self.train = load_digits("train")
        self.test = load_digits("test")
        self.reference = self.features(self.test.images)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 1024) -> np.ndarray:
        """Penultimate classifier features (n, 64) of images (n, 1, 16, 16), float64."""
        x = images.detach().float().cpu().clamp(-1, 1)
        out = [self.classifier.features(c) for c in x.split(batch_size)]
        return torch.cat(out).double().numpy()

    def fid(self, images: Tensor) -> float:
        """FID of ``images`` against the held-out test digits."""
        return frechet_distance(self.features(images), self.reference)

    def floor(self, labels: Tensor | None = None, repeats: int = 5) -> float:
        """The FID real digits reach: all train digits against the test digits, or (given
        the labels of a generated set) the mean over ``repeats`` seeded draws of train
        digits with the same count of each class. FID at a few hundred samples is biased
        upwards, and the class counts move the feature mean a lot, so a generated set is
        compared with the real floor at its own size and class counts."""
        if labels is None:
            return self.fid(self.train.images)
        counts = torch.bincount(labels.cpu(), minlength=10)
        available = torch.bincount(self.train.labels, minlength=10)
        if len(counts) > 10 or bool((counts > available).any()) or counts.sum() < 2:
            raise ArgumentError(
                "labels", f"need labels 0-9 with at most {available.tolist()} of each class"
            )
        g = torch.Generator().manual_seed(0)
        by_class = [torch.nonzero(self.train.labels == c)[:, 0] for c in range(10)]
        fids = []
        for _ in range(repeats):
            draw = [
                i[torch.randperm(len(i), generator=g)[:k]]
                for i, k in zip(by_class, counts.tolist(), strict=True)
            ]
            fids.append(self.fid(self.train.images[torch.cat(draw)]))
        return float(np.mean(fids))

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """The fraction of images the classifier reads as their label."""
        x = images.detach().float().cpu().clamp(-1, 1)
        if len(labels) != len(x):
            raise ArgumentError("labels", f"got {len(labels)} labels for {len(x)} images")
        pred = torch.cat([self.classifier(c).argmax(1) for c in x.split(1024)])
        return float((pred == labels.cpu()).float().mean())


@lru_cache(maxsize=1)
def digits_metrics() -> DigitsMetrics:
    """The shared ``DigitsMetrics`` of the shipped classifier (built on first use)."""
    return DigitsMetrics()


def teacher(
    model: Model,
    noise: Tensor,
    *,
    solver: str = TEACHER_SOLVER,
    nfe: int = TEACHER_NFE,
    **sample_options: Any,
) -> Tensor:
    """The reference solution of ``model``'s ODE from ``noise``: by default DPM-Solver++(3M)
    with 500 calls. Pass the same cond, uncond and guidance as the samplers it judges."""
    return sample(model, noise, solver=solver, nfe=nfe, **sample_options)


def teacher_rmse(samples: Tensor, reference: Tensor) -> float:
    """Mean over samples of the per-sample RMSE against the teacher's output."""
    return float(rmse(samples, reference).mean())
