"""Distances between sample sets, for stochastic samplers (whose samples are compared as
distributions, not path by path)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ArgumentError
from .gmm import GaussianMixture


def _flat(x: Tensor) -> Tensor:
    return x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance: the root mean over random unit directions of the
    squared W2 distance between the 1-d projections (quantiles matched on a common grid
    when the sets differ in size)."""
    a, b = _flat(x), _flat(y)
    if a.shape[1] != b.shape[1]:
        raise ArgumentError("y", f"has {b.shape[1]} features, x has {a.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    if pa.shape[0] != pb.shape[0]:
        q = torch.linspace(0, 1, max(pa.shape[0], pb.shape[0]), dtype=torch.float64)
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel; the bandwidth
    defaults to the median pairwise distance of the pooled sets."""
    a, b = _flat(x), _flat(y)
    if bandwidth is None:
        pooled = torch.cat([a, b])[:2000]
        bandwidth = float(torch.cdist(pooled, pooled).median())

    def k(u, v):
        return torch.exp(-(torch.cdist(u, v) ** 2) / (2 * bandwidth**2))

    m, n = a.shape[0], b.shape[0]
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float(
        (kaa.sum() - kaa.trace()) / (m * (m - 1))
        + (kbb.sum() - kbb.trace()) / (n * (n - 1))
        - 2 * kab.mean()
    )


def mean_log_likelihood(gmm: GaussianMixture, x: Tensor) -> float:
    """The exact mean log density of samples under the mixture (higher is better; the
    mixture's own draws give its negative entropy)."""
    return float(gmm.log_prob(_flat(x)).mean())
