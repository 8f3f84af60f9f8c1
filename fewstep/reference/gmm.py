"""An exact Gaussian mixture: its noised marginals, denoiser and every parameterization.

If x0 ~ sum_k w_k N(mu_k, S_k), then x = alpha x0 + sigma eps is again a mixture,
sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), and the posterior mean is

    E[x0 | x] = sum_k r_k(x) (mu_k + alpha S_k (alpha^2 S_k + sigma^2 I)^{-1} (x - alpha mu_k))

with responsibilities r_k from log-sum-exp. Working in each component's eigenbasis
(S_k = U_k diag(s_k) U_k^T) makes every noise level a diagonal computation, in float64;
the denoiser's vector-Jacobian product is written out too, since tuners differentiate
through thousands of its calls.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ArgumentError
from ..model import Model, PredictionType
from ..schedules import NoiseSchedule


def _column(value: float | Tensor, batch: int) -> Tensor:
    """A (batch, 1, 1) float64 tensor from per-sample values, or (1, 1, 1) from one shared
    value (a scalar or a single-element tensor: every sample at one noise level)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    if v.numel() not in (1, batch):
        raise ArgumentError("alpha, sigma", f"need 1 or {batch} values, got {v.numel()}")
    return v.reshape(-1, 1, 1)


class _PosteriorMean(torch.autograd.Function):
    """The mixture's denoiser in eigen-coordinates with its vector-Jacobian product written
    out: a few passes over (batch, K, d), mostly in place, where autograd would allocate,
    keep and revisit every intermediate (tuners differentiate through thousands of calls).
    Inputs: x (b, d), alpha and sigma as (b or 1, 1, 1) columns, the mixture's tensors."""

    @staticmethod
    def forward(ctx, flat, a, s, basis, means_eig, eigvals, log_weights):
        z, var, logits = _noised(flat, a, s, basis, means_eig, eigvals, log_weights)
        r = torch.softmax(logits, dim=-1).unsqueeze(-1)
        gain = torch.div(eigvals, var).mul_(a)  # the posterior mean's slope per direction
        post = torch.addcmul(means_eig, gain, z)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(z, var, r, post, gain, a, s, basis, means_eig, eigvals)
        return post.mul(r).flatten(1) @ basis.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, var, r, post, gain, a, s, basis, means_eig, eigvals = ctx.saved_tensors
        g = (grad @ basis).view_as(z)  # the output's gradient in each eigenbasis
        g_r = (g * post).sum(-1, keepdim=True)
        g_logits = r * (g_r - (r * g_r).sum(-2, keepdim=True))  # through the softmax
        g_post = g.mul_(r)
        scaled = z / var
        g_z = torch.mul(gain, g_post).addcmul_(g_logits, scaled, value=-1)
        g_flat = g_z.flatten(1) @ basis.T if ctx.needs_input_grad[0] else None
        g_a = g_s = None
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return g_flat, g_a, g_s, None, None, None, None
        # d var: through the posterior's slope and the responsibilities' log-densities
        g_var = scaled.square().sub_(var.reciprocal()).mul_(0.5 * g_logits)
        g_var.addcmul_(gain * scaled, g_post, value=-1)
        if ctx.needs_input_grad[1]:
            g_a = torch.mul(scaled, eigvals).mul_(g_post).addcmul_(g_z, means_eig, value=-1)
            g_a = g_a.addcmul_(g_var, 2 * a * eigvals).sum_to_size(a.shape)
        if ctx.needs_input_grad[2]:
            g_s = (2 * s * g_var).sum_to_size(s.shape)
        return g_flat, g_a, g_s, None, None, None, None


def _noised(flat, a, s, basis, means_eig, eigvals, log_weights):
    """Eigen-coordinates of x - alpha mu_k (b, K, d), each component's noised variances
    (b or 1, K, d) and the responsibilities' logits (b, K)."""
    k, d = means_eig.shape
    z = (flat @ basis).view(-1, k, d).addcmul_(a, means_eig, value=-1)
    var = torch.addcmul(s * s, a * a, eigvals)
    logits = (
        log_weights
        - 0.5 * (z * z).div_(var).sum(-1)
        - 0.5 * torch.log(var).sum(-1)
        - 0.5 * d * math.log(2 * math.pi)
    )
    return z, var, logits


class GaussianMixture:
    """A Gaussian mixture in R^d with full covariances, exact at every noise level."""

    def __init__(self, means: Tensor, covariances: Tensor, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covariances, dtype=torch.float64)
        if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ArgumentError("covariances", "need means (K, d) and covariances (K, d, d)")
        k = means.shape[0]
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else (torch.as_tensor(weights, dtype=torch.float64))
        )
        if w.shape != (k,) or bool(torch.any(w <= 0)):
            raise ArgumentError("weights", "need K positive weights")
        eigvals, eigvecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        if bool(torch.any(eigvals <= 0)):
            raise ArgumentError("covariances", "must be symmetric positive definite")
        self.means, self.covariances = means, covs
        self.weights = w / w.sum()
        self.eigvals, self.eigvecs = eigvals, eigvecs  # (K, d), (K, d, d)
        self._means_eig = torch.einsum("kd,kde->ke", means, eigvecs)  # mu_k in its eigenbasis
        d = means.shape[1]
        basis = eigvecs.permute(1, 0, 2).reshape(d, k * d)  # x @ basis: every eigenbasis
        #: (basis, means_eig, eigvals, log_weights) per device, copied there once
        self._fixed = {basis.device: (basis, self._means_eig, eigvals, torch.log(self.weights))}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def random(
        cls,
        dim: int = 64,
        components: int = 8,
        seed: int = 0,
        *,
        mean_scale: float = 0.5,
        std_max: float = 0.4,
        condition: float = 1e3,
    ) -> GaussianMixture:
        """A reproducible random mixture: means ~ N(0, mean_scale^2 I), each covariance a
        random rotation of variances decaying geometrically from std_max^2 by a factor
        ``condition`` (data concentrated near low-dimensional subspaces, as images are)."""
        rng = np.random.default_rng(seed)
        means = rng.normal(0.0, mean_scale, size=(components, dim))
        variances = std_max**2 * np.geomspace(1.0, 1.0 / condition, dim)
        covs = []
        for _ in range(components):
            q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
            q = q * np.sign(np.diag(r))
            covs.append((q * variances) @ q.T)
        weights = rng.dirichlet(np.full(components, 5.0))
        return cls(
            torch.from_numpy(means), torch.from_numpy(np.stack(covs)), torch.from_numpy(weights)
        )

    # -- exact quantities at noise level (alpha, sigma) ---------------------------------------
    def _inputs(self, x: Tensor, alpha, sigma) -> tuple[Tensor, ...]:
        """x flattened to (b, d) float64, alpha and sigma as columns, and the mixture's
        tensors on x's device: the arguments of ``_noised`` and ``_PosteriorMean``."""
        b = x.shape[0]
        flat = x.reshape(b, -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ArgumentError(
                "x", f"has {flat.shape[1]} features per sample, the mixture {self.dim}"
            )
        dev = flat.device
        if dev not in self._fixed:
            self._fixed[dev] = tuple(v.to(dev) for v in next(iter(self._fixed.values())))
        return flat, _column(alpha, b).to(dev), _column(sigma, b).to(dev), *self._fixed[dev]

    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """E[x0 | alpha x0 + sigma eps = x], shaped like x, float64 (differentiable in x,
        alpha and sigma)."""
        return _PosteriorMean.apply(*self._inputs(x, alpha, sigma)).reshape(x.shape)

    def marginal_log_prob(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """log density of x under the noised marginal at (alpha, sigma), per sample."""
        return torch.logsumexp(_noised(*self._inputs(x, alpha, sigma))[2], dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log density of the clean data, per sample."""
        return self.marginal_log_prob(x, 1.0, 0.0)

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """n exact draws (n, d), float64."""
        g = torch.Generator().manual_seed(seed)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        white = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        scaled = white * self.eigvals[comp].sqrt()
        return self.means[comp] + torch.einsum("bke,be->bk", self.eigvecs[comp], scaled)

    # -- as a model of any parameterization ---------------------------------------------------
    def prediction_fn(self, schedule: NoiseSchedule, prediction: PredictionType = "epsilon"):
        """fn(x, t) returning the exact output of a network of the given parameterization."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            if t.ndim == 1 and len(t) > 1 and t.stride(0) == 0:
                t = t[:1]  # one value expanded over the batch: one noise level, computed once
            t64 = t.to("cpu", torch.float64)  # keeps the graph: tuners differentiate in t
            alpha, sigma = schedule.alpha_sigma(t64)
            shape = (-1, *([1] * (x.ndim - 1)))
            a, s = alpha.view(shape).to(x.device), sigma.view(shape).to(x.device)
            x64 = x.to(torch.float64)
            data = self.denoise(x64, alpha.to(x.device), sigma.to(x.device))
            noise = (x64 - a * data) / s
            if prediction == "epsilon":
                out = noise
            elif prediction == "sample":
                out = data
            elif prediction == "v":
                out = a * noise - s * data
            elif prediction == "score":
                out = -noise / s
            elif prediction == "flow":
                da, ds = (v.view(shape).to(x.device) for v in schedule.alpha_sigma_derivative(t64))
                out = da * data + ds * noise
            else:
                raise ArgumentError("prediction", f"unknown {prediction!r}")
            return out.to(x.dtype)

        return fn

    def model(
        self, schedule: NoiseSchedule, prediction: PredictionType = "epsilon", **kwargs
    ) -> Model:
        """The exact denoiser as a ``fewstep.Model`` predicting ``prediction``."""
        return Model(self.prediction_fn(schedule, prediction), schedule, prediction, **kwargs)
