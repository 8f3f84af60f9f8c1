"""Layer 7: the Gaussian-mixture denoiser is exact and the reference ODE solve is converged."""

import math

import pytest
import torch

import fewstep
from fewstep.reference import GaussianMixture, problem, solve_pf_ode


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(dim=6, components=3, seed=3)


@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.3), (0.3, 0.95), (1.0, 0.05), (0.05, 1.0)])
def test_denoiser_is_tweedie(gmm, alpha, sigma):
    """E[x0 | x] = (x + sigma^2 grad log p_t(x)) / alpha, by autograd of the exact density."""
    x = (
        alpha * gmm.sample(32, seed=1) + sigma * torch.randn(32, 6, dtype=torch.float64)
    ).requires_grad_()
    score = torch.autograd.grad(gmm.marginal_log_prob(x, alpha, sigma).sum(), x)[0]
    tweedie = (x + sigma**2 * score) / alpha
    torch.testing.assert_close(
        gmm.denoise(x.detach(), alpha, sigma), tweedie.detach(), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("levels", ["per sample", "shared", "zero signal", "fixed"])
def test_denoiser_gradient_matches_finite_differences(gmm, levels):
    """The denoiser's written-out vector-Jacobian product in x, alpha and sigma (what tuners
    differentiate through) against central differences, per-sample noise levels or one
    for the batch, at alpha = 0 (the flow's start), and in x alone (fixed noise levels)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    n = 5 if levels == "per sample" else 1
    alpha = 0.1 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    sigma = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    if levels == "zero signal":
        alpha, sigma = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    if levels != "fixed":
        alpha, sigma = alpha.requires_grad_(), sigma.requires_grad_()
    inputs = (x, alpha, sigma)
    assert torch.autograd.gradcheck(gmm.denoise, inputs)


def test_one_noise_level_for_the_batch_is_the_per_sample_computation(gmm):
    """A time expanded over the batch (as samplers call models) is computed once: the same
    output and time gradient as the per-sample computation from a copy of it."""
    fn = gmm.prediction_fn(fewstep.VPSchedule.scaled_linear(), "epsilon")
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    outputs, grads = [], []
    for expand in (True, False):
        t = torch.tensor(400.0, dtype=torch.float64, requires_grad=True)
        out = fn(x, t.expand(7) if expand else t.repeat(7))
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), t)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_denoiser_matches_monte_carlo_moments(gmm):
    """E[D(x_t)] = E[x0] and E[D(x_t) x_t^T] = E[x0 x_t^T] (tower property), within MC error."""
    n, alpha, sigma = 200_000, 0.6, 0.8
    x0 = gmm.sample(n, seed=7)
    xt = alpha * x0 + sigma * torch.randn(
        n, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )
    d = gmm.denoise(xt, alpha, sigma)
    for f in (lambda v: v, lambda v: v[:, :, None] * xt[:, None, :]):
        diff = f(d) - f(x0)
        se = diff.std(0) / math.sqrt(n)
        assert bool(torch.all(diff.mean(0).abs() < 5 * se + 1e-12))


def test_exact_draws_have_the_mixture_moments(gmm):
    x = gmm.sample(200_000, seed=4)
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert float((x.mean(0) - mean).abs().max()) < 0.01


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-flow", "gmm-edm"])
def test_reference_is_stable_under_a_tighter_tolerance(name):
    pb = problem(name, dim=8, components=3)
    noise = pb.noise(8, seed=1)
    loose = solve_pf_ode(pb.gmm, pb.schedule, noise)
    tight = solve_pf_ode(pb.gmm, pb.schedule, noise, rtol=1e-12, atol=1e-12)
    assert float((loose - tight).abs().max()) < 1e-8


def test_reference_agrees_with_a_converged_sampler():
    """A 4000-step DDIM run lands within its O(1/N) error of the reference."""
    pb = problem("gmm-flow", dim=8, components=3)
    noise = pb.noise(8, seed=2)
    ref = pb.reference(noise)
    x = fewstep.sample(pb.model(), noise, solver="ddim", nfe=4000)
    assert float((x - ref).abs().max()) < 2e-3


def test_references_kept_on_disk_are_read_back_not_solved_again(tmp_path, monkeypatch):
    """With ``cache_dir`` a reference is solved once: a fresh problem reads the same tensor
    back, and another noise batch, mixture, schedule or tolerance is solved apart."""
    import fewstep.reference.problems as problems

    solved = []

    def counting(*args, **kwargs):
        solved.append(1)
        return solve_pf_ode(*args, **kwargs)

    monkeypatch.setattr(problems, "solve_pf_ode", counting)
    pb = problem("gmm-vp", dim=4, components=2, cache_dir=tmp_path)
    noise = pb.noise(3, seed=1)
    first = pb.reference(noise)
    again = problem("gmm-vp", dim=4, components=2, cache_dir=tmp_path).reference(noise)
    assert len(solved) == 1 and len(list(tmp_path.iterdir())) == 1
    assert torch.equal(first, again) and again.dtype == torch.float64
    problem("gmm-vp", dim=4, components=2, cache_dir=tmp_path).reference(pb.noise(3, seed=2))
    problem("gmm-vp", dim=4, components=2, seed=5, cache_dir=tmp_path).reference(noise)
    problem("gmm-flow", dim=4, components=2, cache_dir=tmp_path).reference(noise)
    pb.reference(noise, rtol=1e-11)
    assert len(solved) == 5 and len(list(tmp_path.iterdir())) == 5
