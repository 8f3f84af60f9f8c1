"""Drop-ins: fewstep inside diffusers pipelines (and a pipeline's network tuned and sampled
by fewstep), and k-diffusion-style sampler functions."""

import json
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
from fewstep.integrations.diffusers import FewstepScheduler, network_model  # noqa: E402

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


def _sd_scheduler():
    return diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )


def _vp_setup():
    gmm = _gmm()
    config = _sd_scheduler().config
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


def _tiny_unet(out_channels=1):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def _pipeline_images(pipe, steps):
    """Two images from an unconditional pipeline, and the noise it started them from."""
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=steps,
        output_type="np",
    ).images
    return images, torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))


def _as_images(x):
    """What the pipeline makes of final latents x."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("pipeline", ["DDPMPipeline", "DDIMPipeline"])
@pytest.mark.parametrize("solver", ["auto", "heun"])
def test_real_pipelines_run_fewstep(pipeline, solver):
    unet = _tiny_unet()
    base = _sd_scheduler()
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=base)
    pipe.scheduler = FewstepScheduler.from_config(base.config, solver=solver)
    images, noise = _pipeline_images(pipe, 7)
    assert images.shape == (2, 8, 8, 1)
    # the same result as fewstep.sample on the network, from the pipeline's noise
    sched = pipe.scheduler
    times = sorted({float(t) for t in sched.timesteps}, reverse=True)
    model = fewstep.Model(
        lambda x, t: unet(x, t).sample, fewstep.VPSchedule.scaled_linear(), "epsilon"
    )
    with torch.no_grad():
        x = fewstep.sample(model, noise, solver=solver, nfe=7, spacing=Times(tuple(times)))
    assert abs(images - _as_images(x)).max() < 1e-5


def _sd3_transformer():
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
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


def test_flow_transformer_in_a_pipeline_loop():
    """SD3's transformer, built from a tiny config (a full SD3 pipeline also needs text
    encoders and tokenizers, which cannot be built offline), in the SD3 pipeline's loop."""
    transformer = _sd3_transformer()
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


# -- network_model: a pipeline's network as a fewstep Model ---------------------------------


def test_a_sampler_tuned_on_a_unet_runs_the_same_in_its_pipeline(tmp_path):
    unet, base = _tiny_unet(), _sd_scheduler()
    model = network_model(unet, base)
    assert model.prediction == "epsilon"
    assert model.schedule.config() == fewstep.VPSchedule.scaled_linear().config()
    calibration = fewstep.randn((8, 1, 8, 8), seed=3)
    with torch.no_grad():
        config = fewstep.tune(
            model, 4, calibration=calibration, iterations=8, analytic=False, progress=False
        )
    path = tmp_path / "unet-nfe4.json"
    config.save(path)
    pipe = diffusers.DDPMPipeline(
        unet=unet, scheduler=FewstepScheduler.from_config(base.config, tuned=str(path))
    )
    images, noise = _pipeline_images(pipe, 4)
    with torch.no_grad():
        x = fewstep.sample(model, noise, config=path)
    assert abs(images - _as_images(x)).max() < 1e-5


def test_a_guided_flow_transformer_samples_as_its_pipeline_loop_does():
    """SD3's loop with classifier-free guidance and dynamic shifting, against fewstep.sample
    on network_model: the same timesteps, conditions and guidance reach the network."""
    transformer = _sd3_transformer()
    config = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    ).config
    text, pooled = torch.randn(2, 3, 16), torch.randn(2, 16)
    empty, empty_pooled = torch.zeros(2, 3, 16), torch.zeros(2, 16)
    noise, mu, scale = fewstep.randn((2, 4, 8, 8), 7), 0.8, 4.0

    sched = FewstepScheduler.from_config(config, solver="dpmpp_2m")
    sched.set_timesteps(6, mu=mu)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:  # the SD3 pipeline's loop
            out_u, out_c = transformer(
                hidden_states=torch.cat([x, x]),
                timestep=t.expand(4),
                encoder_hidden_states=torch.cat([empty, text]),
                pooled_projections=torch.cat([empty_pooled, pooled]),
                return_dict=False,
            )[0].chunk(2)
            x = sched.step(out_u + scale * (out_c - out_u), t, x).prev_sample

    model = network_model(transformer, config, mu=mu, guidance_scale=scale)
    with torch.no_grad():
        ref = fewstep.sample(
            model,
            noise,
            solver="dpmpp_2m",
            nfe=6,
            cond={"encoder_hidden_states": text, "pooled_projections": pooled},
            uncond={"encoder_hidden_states": empty, "pooled_projections": empty_pooled},
        )
    torch.testing.assert_close(ref, x, rtol=1e-6, atol=1e-6)

    with pytest.raises(fewstep.ArgumentError, match="mu"):
        network_model(transformer, config)  # the shift depends on the image size
    with pytest.raises(fewstep.ArgumentError, match="mu"):
        network_model(_tiny_unet(), _sd_scheduler(), mu=0.5)
    with pytest.raises(fewstep.ArgumentError, match="prompt"):
        fewstep.sample(model, noise, nfe=4, cond={"prompt": text}, uncond={"prompt": empty})


def test_an_sdxl_unet_gets_its_added_conditions_and_a_learned_variance_is_dropped():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=8,  # epsilon and a variance, as DeepFloyd IF's UNets predict
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,
    ).eval()
    model = network_model(unet, _sd_scheduler())
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([900.0, 500.5, 20.0])
    cond = {
        "encoder_hidden_states": torch.randn(3, 5, 16),
        "text_embeds": torch.randn(3, 8),
        "time_ids": torch.randn(3, 6),
    }
    with torch.no_grad():
        got = model.fn(x, t, **cond)
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        want = unet(x, t, cond["encoder_hidden_states"], added_cond_kwargs=added).sample
    assert torch.equal(got, want[:, :4])


def test_flux_like_transformers_get_the_timestep_per_thousand_and_fixed_inputs():
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    ids = {"img_ids": torch.zeros(6, 3), "txt_ids": torch.zeros(3, 3)}
    config = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    model = network_model(transformer, config, fixed=ids)
    x, t = torch.randn(2, 6, 4), torch.tensor([0.9, 0.25])
    cond = {
        "encoder_hidden_states": torch.randn(2, 3, 16),
        "pooled_projections": torch.randn(2, 16),
    }
    with torch.no_grad():
        got = model.fn(x, t, **cond)
        pipeline_timestep = t * 1000  # FewstepScheduler's timesteps, which Flux's loop divides
        want = transformer(hidden_states=x, timestep=pipeline_timestep / 1000, **cond, **ids).sample
        assert torch.equal(got, want)
        doubled = network_model(transformer, config, fixed=ids, timestep=lambda s: s / 500)
        want = transformer(hidden_states=x, timestep=2 * t, **cond, **ids).sample
        torch.testing.assert_close(doubled.fn(x, t, **cond), want)


def test_a_compiled_network_is_called_as_the_module_it_compiles():
    """torch.compile's wrapper takes *args: the inputs are named from the module inside."""
    unet = _tiny_unet()
    compiled = torch.compile(unet, backend="eager")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([700.0, 30.0])
    with torch.no_grad():
        assert torch.equal(network_model(compiled, _sd_scheduler()).fn(x, t), unet(x, t).sample)


def test_network_model_errors_name_the_argument():
    with pytest.raises(fewstep.ArgumentError, match="network"):
        network_model(lambda x, t: x, _sd_scheduler())
    with pytest.raises(fewstep.ArgumentError, match=r"Linear\.forward takes no timestep"):
        network_model(torch.nn.Linear(2, 2), _sd_scheduler())
    with pytest.raises(fewstep.ArgumentError, match="scheduler"):
        network_model(_tiny_unet(), "scaled_linear")
    with pytest.raises(fewstep.ArgumentError, match="fixed"):
        network_model(_tiny_unet(), _sd_scheduler(), fixed=[1])
    with pytest.raises(fewstep.ArgumentError, match=r"fixed\['img_ids'\]"):
        fixed = network_model(_tiny_unet(), _sd_scheduler(), fixed={"img_ids": torch.zeros(6, 3)})
        fixed.fn(torch.randn(1, 1, 8, 8), torch.tensor([500.0]))
    unet = _tiny_unet().train()
    unet.mid_block.resnets[0].dropout.p = 0.1
    with pytest.warns(UserWarning, match="training mode"):
        fewstep.sample(network_model(unet, _sd_scheduler()), torch.randn(1, 1, 8, 8), nfe=2)


# -- a pipeline saved on disk, from the command line -----------------------------------------


def _saved_dit(path):
    """A tiny class-conditional DiT pipeline (1000 classes, a learned variance) saved at path."""
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline guides with the null class 1000
    ).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), norm_num_groups=4, latent_channels=4, sample_size=8
    ).eval()
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear")
    labels = {i: str(i) for i in range(1000)}
    pipe = diffusers.DiTPipeline(transformer, vae, scheduler, id2label=labels)
    pipe.save_pretrained(path)
    return pipe


def test_a_saved_dit_pipeline_is_tuned_from_the_command_line_and_runs_in_its_pipeline(
    tmp_path, capsys
):
    from fewstep.cli import main
    from fewstep.generation import load_samples
    from fewstep.generation.runner import index_noise
    from fewstep.tuner.cli import model_first

    pipe = _saved_dit(tmp_path / "dit")
    tune = ["tune", "--model", str(tmp_path / "dit"), "--nfe", "3", "--guidance", "2"]
    tune += ["--calibration", "6", "--iterations", "4", "--out", str(tmp_path)]
    assert main(tune) == 0  # a pipeline directory: model-first by default
    path = tmp_path / "dit-nfe3.json"
    assert f"-> {path}" in capsys.readouterr().out
    assert model_first(str(tmp_path / "dit"), None) and not model_first("gmm-vp", None)
    assert not model_first(str(tmp_path / "dit"), False)  # --no-model-first
    # the tuned sampler in DiTPipeline: the images fewstep.sample gives from the same noise
    base = pipe.scheduler.config
    pipe.scheduler = FewstepScheduler.from_config(base, tuned=str(path))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        [2, 0], guidance_scale=2.0, generator=generator, num_inference_steps=3, output_type="np"
    ).images
    noise = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    model = network_model(pipe.transformer, base, guidance_scale=2.0)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        x = fewstep.sample(
            model,
            noise,
            config=path,
            cond={"class_labels": labels},
            uncond={"class_labels": torch.full_like(labels, 1000)},
        )
        decoded = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    assert abs(images - _as_images(decoded)).max() < 1e-5
    # generate cycles the classes and guides with the null class, as the model loaded alone
    gen = ["generate", "--model", str(tmp_path / "dit"), "--num-samples", "4", "--guidance"]
    gen += ["2", "--config", str(path), "--out", str(tmp_path / "gen"), "--no-progress"]
    assert main(gen) == 0
    batch = load_samples(tmp_path / "gen")
    assert batch.labels.tolist() == [0, 1, 2, 3]
    labels = batch.labels
    with torch.no_grad():
        expected = fewstep.sample(
            model,
            index_noise((4, 4, 4), range(4), seed=0),
            config=path,
            cond={"class_labels": labels},
            uncond={"class_labels": torch.full_like(labels, 1000)},
        )
    torch.testing.assert_close(batch.samples, expected, rtol=0, atol=1e-6)


def test_a_saved_unconditional_pipeline_and_what_the_command_line_cannot_run(tmp_path):
    from fewstep.generation import sources
    from fewstep.integrations.diffusers.saved import SavedPipeline

    diffusers.DDPMPipeline(unet=_tiny_unet(), scheduler=_sd_scheduler()).save_pretrained(
        tmp_path / "ddpm"
    )
    name = str(tmp_path / "ddpm")
    options, weights, conditional = sources.identify(name, {"torch_dtype": "bfloat16"})
    assert conditional is False and len(weights) == 64
    model, shape = sources.load(name, options, 1.0, weights, None)
    assert shape == (1, 8, 8) and next(model.fn.network.parameters()).dtype == torch.bfloat16
    assert model.prediction == "epsilon" and model.fn.network.training is False
    assert fewstep.sample(model, fewstep.randn((2, *shape), seed=1), nfe=3).isfinite().all()
    with pytest.raises(fewstep.ArgumentError, match=r"only \['mu', 'torch_dtype'\]"):
        sources.identify(name, {"shift": 3})
    with pytest.raises(fewstep.ArgumentError, match="torch_dtype"):
        sources.load(name, {"torch_dtype": "int8"}, 1.0, weights, None)
    with pytest.raises(fewstep.FewstepError, match="every worker needs the same model files"):
        sources.load(name, options, 1.0, "0" * 64, None)
    with open(next((tmp_path / "ddpm" / "unet").glob("*.safetensors")), "ab") as f:
        f.write(b"\0")  # changed weights: hashed afresh, not the digest read before
    assert sources.identify(name, {})[1] != weights
    # text-to-image: the prompts' embeddings cannot come from the command line
    index = json.loads((tmp_path / "ddpm" / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "CLIPTextModel"]
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(fewstep.ArgumentError, match=r"text-to-image.*network_model"):
        sources.identify(name, {})
    del index["text_encoder"]
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(fewstep.ArgumentError, match=r"needs \['encoder_hidden_states'\]"):
        SavedPipeline.read(name)
    with pytest.raises(fewstep.ArgumentError, match="save_pretrained directory"):
        sources.kind(str(tmp_path))  # no model_index.json


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
