"""Stochastic samplers: the right distribution, noise that reproduces per sample, Brownian
paths, and the peers' samplers given the same draws."""

import math
import warnings

import pytest
import torch

import fewstep
from fewstep.noise import IndependentNoise, sample_seeds
from fewstep.program import Draw
from fewstep.reference import problem, sliced_wasserstein
from fewstep.reference.peers import (
    PeerUnavailable,
    diffusers_scheduler,
    kdiffusion_sampling,
    kdiffusion_sigmas,
)

STOCHASTIC = [
    ("ddpm", {}, 200),
    ("ddim_eta", {"eta": 0.5}, 200),
    ("euler_ancestral", {}, 200),
    ("dpmpp_2s_ancestral", {}, 201),
    ("dpmpp_2m_sde", {}, 100),
    ("dpmpp_3m_sde", {}, 100),
    ("sa_solver", {}, 100),
    ("er_sde", {}, 100),
    ("restart", {}, 100),
    ("euler", {"s_churn": 10.0}, 150),
    ("heun", {"s_churn": 10.0}, 151),
]


@pytest.fixture(scope="module")
def problems():
    return {
        name: problem(name, dim=4, components=3, seed=4)
        for name in ("gmm-vp", "gmm-flow", "gmm-edm")
    }


@pytest.mark.parametrize("solver,options,nfe", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
@pytest.mark.parametrize("name", ["gmm-vp", "gmm-flow", "gmm-edm"])
def test_samples_follow_the_mixture(problems, name, solver, options, nfe):
    """At a high step count the samples are draws from the mixture: means and covariances
    within Monte-Carlo error, sliced W2 close to that between two sets of exact draws."""
    pb = problems[name]
    n = 1500
    x = fewstep.sample(pb.model(), pb.noise(n, seed=7), solver=solver, nfe=nfe, seed=11, **options)
    exact, other = pb.gmm.sample(n, seed=1), pb.gmm.sample(n, seed=2)
    se = exact.std(0) / math.sqrt(n)
    assert bool(torch.all((x.mean(0) - exact.mean(0)).abs() < 6 * math.sqrt(2) * se)), x.mean(
        0
    ) - exact.mean(0)
    cov_x, cov_e = torch.cov(x.T.double()), torch.cov(exact.T)
    assert float((cov_x - cov_e).abs().max()) < 6 * math.sqrt(2) * float(
        cov_e.diagonal().max()
    ) / math.sqrt(n)
    baseline = sliced_wasserstein(exact, other)
    assert sliced_wasserstein(x, exact) < 2.0 * baseline + 0.01, (
        sliced_wasserstein(x, exact),
        baseline,
    )


@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver"])
def test_multistep_sde_at_few_steps_on_flow(solver):
    """A flow-time grid ends with a step far longer in log-SNR than the ones before it: the
    multistep SDE solvers lower their order there instead of extrapolating across it (with
    the reference rule, max_step_ratio=None, 3M SDE lands at 20x the exact-vs-exact
    distance at NFE 10)."""
    pb = problem("gmm-flow", dim=16, components=8, seed=0)
    noise, exact = pb.noise(256, seed=0), pb.gmm.sample(256, seed=100)
    floor = sliced_wasserstein(pb.gmm.sample(256, seed=101), exact)
    x = fewstep.sample(pb.model(), noise, solver=solver, nfe=10, seed=0)
    assert sliced_wasserstein(x, exact) < 1.6 * floor
    if solver == "dpmpp_3m_sde":
        raw = fewstep.sample(pb.model(), noise, solver=solver, nfe=10, seed=0, max_step_ratio=None)
        assert sliced_wasserstein(raw, exact) > 5 * floor


def _elementwise_model(schedule):
    # D = 0.3 x: per-sample arithmetic only, so results can be compared bit for bit
    return fewstep.Model(lambda x, t: 0.3 * x, schedule, "sample")


@pytest.mark.parametrize("solver,options,nfe", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_a_sample_does_not_depend_on_its_batch(solver, options, nfe):
    schedule = fewstep.EDMSchedule(0.01, 20.0)
    model = _elementwise_model(schedule)
    seeds = [5, 17, 23, 42]
    noise = fewstep.randn((4, 3, 2), seeds)
    nfe = 40
    batch = fewstep.sample(model, noise, solver=solver, nfe=nfe, seed=seeds, **options)
    for i in (0, 3):
        alone = fewstep.sample(
            model, noise[i : i + 1], solver=solver, nfe=nfe, seed=[seeds[i]], **options
        )
        assert torch.equal(alone[0], batch[i])
    pair = fewstep.sample(
        model, noise[[3, 1]], solver=solver, nfe=nfe, seed=[seeds[3], seeds[1]], **options
    )
    assert torch.equal(pair[0], batch[3]) and torch.equal(pair[1], batch[1])
    again = fewstep.sample(model, noise, solver=solver, nfe=nfe, seed=seeds, **options)
    other = fewstep.sample(model, noise, solver=solver, nfe=nfe, seed=[1, 2, 3, 4], **options)
    assert torch.equal(again, batch) and not torch.equal(other, batch)


def test_int_seed_and_float64_noise(problems):
    pb = problems["gmm-vp"]
    noise = pb.noise(3)
    a = fewstep.sample(pb.model(), noise, solver="dpmpp_2m_sde", nfe=10, seed=3)
    b = fewstep.sample(
        pb.model(), noise[:2], solver="dpmpp_2m_sde", nfe=10, seed=sample_seeds(3, 3)[:2]
    )
    torch.testing.assert_close(a[:2], b, rtol=1e-12, atol=1e-12)
    c = fewstep.sample(
        pb.model(), noise, solver="dpmpp_2m_sde", nfe=10, seed=3, noise_dtype=torch.float64
    )
    assert not torch.equal(a, c) and bool(torch.isfinite(c).all())


def test_brownian_noise_is_consistent_across_step_counts(problems):
    """With a Brownian tree, refining the steps refines the same noise path, so solutions at
    NFE n and 2n are close (strong convergence); independent draws give unrelated paths."""
    pb = problems["gmm-vp"]
    noise = pb.noise(64, seed=2)
    diffs = {}
    for brownian in (False, True):
        runs = [
            fewstep.sample(
                pb.model(), noise, solver="dpmpp_2m_sde", nfe=n, seed=9, brownian=brownian
            )
            for n in (60, 120)
        ]
        diffs[brownian] = float((runs[0] - runs[1]).pow(2).mean().sqrt())
    assert diffs[True] < 0.25 * diffs[False], diffs


def test_restart_counts_every_call(problems):
    pb = problems["gmm-edm"]
    model = pb.model()
    traj = fewstep.sample(
        model,
        pb.noise(4),
        solver="restart",
        nfe=40,
        seed=1,
        intervals=[(0.1, 2.0, 2, 7), (0.5, 5.0, 1, 5)],
        return_trajectory=True,
    )
    assert model.nfe == traj.nfe == 40
    with pytest.raises(fewstep.ArgumentError, match="nfe"):
        fewstep.sample(
            model, pb.noise(2), solver="restart", nfe=10, seed=1, intervals=[(0.1, 2.0, 3, 11)]
        )


def _our_draws(seeds, like_shape):
    """k-diffusion's noise_sampler replaying fewstep's draws in order."""
    source = IndependentNoise(seeds, torch.float32)
    count = [0]

    def sampler(sigma, sigma_next):
        z = source(Draw(count[0], 0.0, 0.0), torch.empty(like_shape, dtype=torch.float64))
        count[0] += 1
        return z

    return sampler


K_STOCHASTIC = [
    ("euler_ancestral", {}, "sample_euler_ancestral", {}, 1),
    ("dpmpp_2s_ancestral", {}, "sample_dpmpp_2s_ancestral", {}, 2),
    ("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}, 1),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, "sample_dpmpp_2m_sde", {"solver_type": "heun"}, 1),
    ("dpmpp_2m_sde", {"eta": 0.5}, "sample_dpmpp_2m_sde", {"eta": 0.5}, 1),
    ("dpmpp_3m_sde", {}, "sample_dpmpp_3m_sde", {}, 1),
]


@pytest.mark.parametrize(
    "ours,options,peer,peer_options,calls",
    K_STOCHASTIC,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(K_STOCHASTIC)],
)
@pytest.mark.parametrize("name", ["gmm-vp", "gmm-edm"])
def test_equals_k_diffusion_given_the_same_draws(
    problems, name, ours, options, peer, peer_options, calls
):
    try:
        kd = kdiffusion_sampling()
    except PeerUnavailable as err:
        pytest.skip(str(err))
    pb = problems[name]
    model, noise, seeds = pb.model(), pb.noise(3, seed=1), [4, 5, 6]
    n = 8
    times = fewstep.spacing.Karras().times(pb.schedule, n)
    nfe = calls * (n - 1) + 1
    a = fewstep.sample(model, noise, solver=ours, nfe=nfe, spacing=times, seed=seeds, **options)
    sigmas = kdiffusion_sigmas(pb.schedule, times)
    x = noise * pb.schedule.initial_scale(float(times[0])) / float(pb.schedule.alpha(times[0]))
    from fewstep.reference.peers import kdiffusion_denoiser

    b = getattr(kd, peer)(
        kdiffusion_denoiser(model),
        x,
        sigmas,
        disable=True,
        noise_sampler=_our_draws(seeds, noise.shape),
        **peer_options,
    )
    assert float((a - b).abs().max() / b.abs().max()) < 1e-6


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_equals_diffusers_given_the_same_draws(problems, eta):
    pytest.importorskip("diffusers")
    warnings.filterwarnings("ignore")
    pb = problems["gmm-vp"]
    model, noise, seeds = pb.model(), pb.noise(3, seed=1), [7, 8, 9]
    s = diffusers_scheduler(
        "DDIMScheduler", pb.schedule, "epsilon", set_alpha_to_one=True, timestep_spacing="trailing"
    )
    s.alphas_cumprod = pb.schedule.alphas_cumprod.clone()
    s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(10)
    draws = IndependentNoise(seeds)
    x = noise.clone()
    for k, t in enumerate(s.timesteps):
        out = model.fn(x, torch.full((3,), float(t), dtype=torch.float64))
        z = draws(Draw(k, 0.0, 0.0), x)
        x = s.step(out, t, x, eta=eta, variance_noise=z).prev_sample
    # diffusers' last step jumps to alpha = 1 and adds no noise there: fewstep's final data
    # prediction; before it, the states match draw for draw
    ours = fewstep.sample(
        model, noise, solver="ddim_eta", eta=eta, nfe=10, spacing="trailing", seed=seeds
    )
    assert float((ours - x).abs().max() / x.abs().max()) < 1e-6


def test_stochastic_options_are_checked(problems):
    pb = problems["gmm-vp"]
    model, noise = pb.model(), pb.noise(2)
    with pytest.raises(fewstep.ArgumentError, match="s_churn"):
        fewstep.sample(model, noise, solver="euler", s_churn=-1.0)
    with pytest.raises(fewstep.ArgumentError, match="base"):
        fewstep.sample(model, noise, solver="restart", base="ddpm", nfe=30)
    with pytest.raises(fewstep.ArgumentError, match="eta"):
        fewstep.sample(model, noise, solver="ddim_eta", eta=1.5)
    with pytest.raises(fewstep.ArgumentError, match="max_step_ratio"):
        fewstep.sample(model, noise, solver="dpmpp_2m_sde", max_step_ratio=0.5)
