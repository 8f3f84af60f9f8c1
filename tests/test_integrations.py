"""Drop-ins: fewstep inside diffusers pipelines, and k-diffusion-style sampler functions."""

import math
import warnings

import pytest
import torch

import fewstep
import fewstep.k as fk
from fewstep.reference import GaussianMixture
from fewstep.solvers import SOLVERS
from fewstep.spacing import Times

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

warnings.filterwarnings("ignore")

DETERMINISTIC = [
    n
    for n, spec in SOLVERS.items()
    if not spec[0].stochastic and not getattr(spec[0], "adaptive", False) and n != "restart"
]


def _gmm():
    return GaussianMixture.random(dim=2 * 3 * 3, components=3, seed=5)


def _pipeline_loop(scheduler, fn, noise, steps, **set_kwargs):
    """What a diffusers pipeline does with a scheduler."""
    scheduler.set_timesteps(steps, **set_kwargs)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = fn(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x).prev_sample
    return x


def _vp_setup():
    gmm = _gmm()
    config = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).config
    schedule = fewstep.VPSchedule.scaled_linear()
    inner = gmm.prediction_fn(schedule, "epsilon")
    fn = lambda x, t: inner(x, torch.as_tensor(t, dtype=torch.float32).expand(x.shape[0]))  # noqa: E731
    return config, schedule, fn


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_scheduler_equals_fewstep_sample_vp(solver):
    config, schedule, fn = _vp_setup()
    noise = fewstep.randn((3, 2, 3, 3), 0)
    sched = FewstepScheduler.from_config(config, solver=solver)
    x = _pipeline_loop(sched, fn, noise, 9)
    times = sorted({float(t) for t in sched.timesteps}, reverse=True)
    model = fewstep.Model(lambda x_, t: fn(x_, t), schedule, "epsilon")
    ref = fewstep.sample(model, noise, solver=solver, nfe=9, spacing=Times(tuple(times)))
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert model.nfe == len(sched.timesteps) == 9
    assert all(float(t) == round(float(t)) for t in sched.timesteps)  # integer timesteps


@pytest.mark.parametrize("solver", ["auto", "unipc", "dpmpp_2m", "heun", "dpmpp_3s", "euler"])
def test_scheduler_equals_fewstep_sample_flow_with_dynamic_shift(solver):
    gmm = _gmm()
    config = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    sched = FewstepScheduler.from_config(config, solver=solver)
    assert sched.config.schedule_type == "flow" and sched.prediction == "flow"
    mu = 0.7
    schedule = fewstep.FlowSchedule(shift=math.exp(mu), t_min=1e-3)
    inner = gmm.prediction_fn(schedule, "flow")
    fn = lambda x, t: inner(x, torch.as_tensor(t / 1000.0, dtype=torch.float32).expand(x.shape[0]))  # noqa: E731
    noise = fewstep.randn((2, 2, 3, 3), 1)
    x = _pipeline_loop(sched, fn, noise, 8, mu=mu)
    model = fewstep.Model(lambda x_, t: inner(x_, t), schedule, "flow")
    ref = fewstep.sample(model, noise, solver=solver, nfe=8)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_history_does_not_leak_across_batches():
    config, _, fn = _vp_setup()
    sched = FewstepScheduler.from_config(config, solver="dpmpp_3m")
    _pipeline_loop(sched, fn, fewstep.randn((2, 2, 3, 3), 3), 8)
    second = _pipeline_loop(sched, fn, fewstep.randn((5, 2, 3, 3), 4), 8)
    fresh = _pipeline_loop(
        FewstepScheduler.from_config(config, solver="dpmpp_3m"),
        fn,
        fewstep.randn((5, 2, 3, 3), 4),
        8,
    )
    assert torch.equal(second, fresh)


def test_custom_sigmas_and_timesteps_and_config_round_trip(tmp_path):
    config, _, _ = _vp_setup()
    sched = FewstepScheduler.from_config(config, solver="unipc", spacing="karras")
    sched.set_timesteps(sigmas=[14.0, 5.0, 1.0, 0.3, 0.05, 0.0])
    assert len(sched.timesteps) == 5 and sched.sigmas[-1] == 0
    sched.set_timesteps(timesteps=[999, 700, 400, 100, 0])
    assert sched.timesteps.tolist() == [999, 700, 400, 100, 0]
    sched.save_config(tmp_path)
    again = FewstepScheduler.from_pretrained(tmp_path)
    again.set_timesteps(7)
    sched.set_timesteps(7)
    assert torch.equal(again.timesteps, sched.timesteps) and again.config.solver == "unipc"


def test_image_to_image_starts_mid_grid():
    config, schedule, fn = _vp_setup()
    sched = FewstepScheduler.from_config(config, solver="dpmpp_2m")
    sched.set_timesteps(10)
    start = 4
    x0 = torch.full((2, 2, 3, 3), 0.3)
    noise = fewstep.randn((2, 2, 3, 3), 2)
    t0 = sched.timesteps[start : start + 1].repeat(2)
    x = sched.add_noise(x0, noise, t0)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(float(t0[0])))
    torch.testing.assert_close(x, alpha * x0 + sigma * noise)
    sched.set_begin_index(start)
    for t in sched.timesteps[start:]:
        x = sched.step(fn(x, t), t, x).prev_sample
    times = [float(t) for t in sched.timesteps[start:]]
    model = fewstep.Model(lambda x_, t: fn(x_, t), schedule, "epsilon")
    start_state = alpha * x0 + sigma * noise
    _, _, program = fewstep.plan(model, "dpmpp_2m", len(times), times)
    ref = fewstep.sampling.run(model, program, start_state)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_scheduler_errors_name_the_argument():
    config, _, _ = _vp_setup()
    sched = FewstepScheduler.from_config(config, solver="ddim")
    with pytest.raises(fewstep.ArgumentError, match="set_timesteps"):
        sched.step(torch.zeros(1, 2, 3, 3), 999, torch.zeros(1, 2, 3, 3))
    sched.set_timesteps(5)
    with pytest.raises(fewstep.ArgumentError, match="eta"):
        sched.step(torch.zeros(1, 2, 3, 3), sched.timesteps[0], torch.zeros(1, 2, 3, 3), eta=0.5)
    with pytest.raises(fewstep.ArgumentError, match="timestep"):
        sched.step(torch.zeros(1, 2, 3, 3), 3, torch.zeros(1, 2, 3, 3))
    with pytest.raises(fewstep.ArgumentError, match="prediction_type"):
        FewstepScheduler(prediction_type="noise")


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


@pytest.mark.parametrize("pipeline", ["DDPMPipeline", "DDIMPipeline"])
@pytest.mark.parametrize("solver", ["auto", "heun"])
def test_real_pipelines_run_fewstep(pipeline, solver):
    unet = _tiny_unet()
    base = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=base)
    pipe.scheduler = FewstepScheduler.from_config(base.config, solver=solver)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=7,
        output_type="np",
    ).images
    assert images.shape == (2, 8, 8, 1)
    # the same result as fewstep.sample on the network, from the pipeline's noise
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    sched = pipe.scheduler
    times = sorted({float(t) for t in sched.timesteps}, reverse=True)
    model = fewstep.Model(
        lambda x, t: unet(x, t).sample, fewstep.VPSchedule.scaled_linear(), "epsilon"
    )
    with torch.no_grad():
        x = fewstep.sample(model, noise, solver=solver, nfe=7, spacing=Times(tuple(times)))
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - expected).max() < 1e-5


def test_flow_transformer_in_a_pipeline_loop():
    """SD3's transformer, built from a tiny config (a full SD3 pipeline also needs text
    encoders and tokenizers, which cannot be built offline), in the SD3 pipeline's loop."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
    ).eval()
    text, pooled = torch.randn(2, 3, 16), torch.randn(2, 16)

    def fn(x, t):
        t = torch.as_tensor(t, dtype=torch.float32).expand(x.shape[0])
        with torch.no_grad():
            return transformer(
                hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t
            ).sample

    config = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    sched = FewstepScheduler.from_config(config, solver="dpmpp_2m")
    noise = fewstep.randn((2, 4, 8, 8), 7)
    x = _pipeline_loop(sched, fn, noise, 6)
    model = fewstep.Model(lambda x_, t: fn(x_, t * 1000), fewstep.FlowSchedule(3.0), "flow")
    ref = fewstep.sample(model, noise, solver="dpmpp_2m", nfe=6)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


# -- fewstep.k ---------------------------------------------------------------------------


def _denoiser():
    gmm = _gmm()
    return lambda x, sigma, **_: gmm.denoise(x, 1.0, sigma.double()).to(x.dtype)


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_k_functions_equal_fewstep_sample(solver):
    denoiser = _denoiser()
    sigmas = fk.get_sigmas_karras(7, 0.01, 20.0).double()
    x = fewstep.randn((3, 18), 1, dtype=torch.float64) * 20.0
    out = getattr(fk, f"sample_{solver}")(denoiser, x, sigmas, disable=True)
    schedule = fewstep.EDMSchedule(0.01, 20.0)
    model = fewstep.Model(lambda x_, t: denoiser(x_, t), schedule, "sample")
    solver_obj = fewstep.solvers.get_solver(solver)
    ref = fewstep.sample(
        model,
        x / 20.0,
        solver=solver,
        nfe=solver_obj.nfe_for_points(7),
        spacing=sigmas[:-1].tolist(),
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_k_sigma_helpers_equal_k_diffusion():
    from fewstep.reference.peers import PeerUnavailable, kdiffusion_sampling

    try:
        kd = kdiffusion_sampling()
    except PeerUnavailable as err:
        pytest.skip(str(err))
    torch.testing.assert_close(
        fk.get_sigmas_karras(9, 0.03, 14.6), kd.get_sigmas_karras(9, 0.03, 14.6)
    )
    torch.testing.assert_close(
        fk.get_sigmas_exponential(9, 0.03, 14.6), kd.get_sigmas_exponential(9, 0.03, 14.6)
    )
    torch.testing.assert_close(
        fk.get_sigmas_polyexponential(9, 0.03, 14.6, rho=2.0),
        kd.get_sigmas_polyexponential(9, 0.03, 14.6, rho=2.0),
    )
    table = fk.get_sigmas_table([14.6, 6.5, 3.9, 0.15, 0.03], 9)
    assert table.shape == (10,) and float(table[-1]) == 0


def test_k_stochastic_with_seeds_and_noise_samplers():
    denoiser = _denoiser()
    sigmas = fk.get_sigmas_exponential(8, 0.01, 20.0).double()
    x = fewstep.randn((4, 18), 2, dtype=torch.float64) * 20.0
    a = fk.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, seed=[1, 2, 3, 4])
    b = fk.sample_dpmpp_2m_sde(denoiser, x[2:], sigmas, disable=True, seed=[3, 4])
    torch.testing.assert_close(a[2:], b)
    calls = []
    z = lambda s, s2: calls.append((s, s2)) or torch.zeros(4, 18)  # noqa: E731
    c = fk.sample_euler_ancestral(denoiser, x, sigmas, disable=True, noise_sampler=z)
    assert len(calls) == 7 and bool(torch.isfinite(c).all())  # one draw per step
    with pytest.raises(fewstep.ArgumentError, match="seed"):
        fk.sample_dpmpp_2m(denoiser, x, sigmas, seed=1)
