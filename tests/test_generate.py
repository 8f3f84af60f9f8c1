"""Large-scale generation: sample i depends on (seed, i) only; shards and the manifest are
atomic and checksummed; reruns resume, repair damaged shards and refuse other
configurations; Ray (a local cluster started here) gives the in-process samples bit for bit
and retries a failed task."""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.cli import build_parser, main
from fewstep.errors import ArgumentError
from fewstep.generation import (
    Sampler,
    ShardError,
    generate,
    index_noise,
    load_samples,
    missing_ranges,
    sample_indices,
)
from fewstep.generation import manifest as manifest_module
from fewstep.models import load
from fewstep.reference import problem
from fewstep.tuner import SamplerConfig

GMM = {"model": "gmm-vp", "model_options": {"dim": 3, "components": 2}, "progress": False}
DIGITS = {
    "model": "digits-unet",
    "nfe": 3,
    "guidance": 2.0,
    "shard_size": 8,
    "batch_size": 4,
    "threads": 1,
    "progress": False,
}


def flaky_gmm(marker: str, log: str, fail: str = "raise", dim: int = 3) -> fewstep.Model:
    """A gmm-vp model whose first call after ``marker`` appears fails: it raises, or kills
    its process ("exit"); the marker is consumed, so the retry succeeds. Each load appends
    the loading process's id to ``log``."""
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    model = problem("gmm-vp", dim=dim, components=2).model()
    exact = model.fn

    def call(x, t, **cond):
        try:
            os.unlink(marker)
        except FileNotFoundError:
            return exact(x, t, **cond)
        if fail == "exit":
            os._exit(1)
        raise RuntimeError("injected failure")

    model.fn = call
    model.image_shape = (dim,)
    return model


def nan_gmm(log: str, dim: int = 3) -> fewstep.Model:
    """A gmm-vp model whose every call returns NaN and appends a line to ``log``."""
    model = problem("gmm-vp", dim=dim, components=2).model()

    def call(x, t, **cond):
        with open(log, "a") as handle:
            handle.write("call\n")
        return torch.full_like(x, float("nan"))

    model.fn = call
    model.image_shape = (dim,)
    return model


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def checksums(out: Path) -> list[str]:
    return [s["sha256"] for s in manifest(out)["shards"]]


# -- sample i depends on (seed, i) only -------------------------------------------------------


def test_noise_of_sample_i_depends_on_seed_and_index_only():
    full = fewstep.randn((12, 1, 4, 4), seed=5)
    assert torch.equal(index_noise((1, 4, 4), [9, 2, 7], seed=5), full[[9, 2, 7]])
    assert torch.equal(index_noise((1, 4, 4), range(12), seed=5), full)
    assert not torch.equal(index_noise((1, 4, 4), [9], seed=6), full[[9]])


def test_stochastic_samples_do_not_depend_on_batch_or_order():
    model = problem("gmm-vp", dim=3, components=2).model()
    sampler = Sampler("euler_ancestral", nfe=4)
    one = sample_indices(model, [7, 3, 5, 0], sampler, seed=1, shape=(3,), batch_size=4)
    single = sample_indices(model, [7, 3, 5, 0], sampler, seed=1, shape=(3,), batch_size=1)
    ranged = sample_indices(model, range(8), sampler, seed=1, shape=(3,), batch_size=3)
    torch.testing.assert_close(one.samples, single.samples, rtol=0, atol=1e-6)
    torch.testing.assert_close(one.samples, ranged.samples[[7, 3, 5, 0]], rtol=0, atol=1e-6)
    assert one.labels is None and one.indices.tolist() == [7, 3, 5, 0]


def test_batch_size_changes_digits_samples_only_by_float_rounding():
    model = load("digits-unet", guidance_scale=2.0)
    sampler = Sampler(nfe=3)
    kw = {"seed": 0, "shape": model.image_shape, "labels": "cycle"}
    a = sample_indices(model, range(12), sampler, batch_size=12, **kw)
    b = sample_indices(model, range(12), sampler, batch_size=5, **kw)
    assert torch.equal(a.labels, torch.arange(12) % 10)
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-4)


# -- shards, manifest, resume -----------------------------------------------------------------


def test_generate_writes_checksummed_shards_and_a_manifest(tmp_path):
    result = generate(out=tmp_path, num_samples=40, shard_size=16, batch_size=7, **GMM)
    doc = manifest(tmp_path)
    assert (result.generated, result.reused, result.shards) == (40, 0, 3)
    assert [(s["start"], s["stop"], s["count"]) for s in doc["shards"]] == [
        (0, 16, 16),
        (16, 32, 16),
        (32, 40, 8),
    ]
    assert doc["shards"][0]["file"] == "samples-000000000-000000016.safetensors"
    for s in doc["shards"]:
        assert hashlib.sha256((tmp_path / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    spec = doc["spec"]
    assert spec["model_options"] == {"dim": 3, "components": 2, "seed": 0}
    assert (spec["solver"], spec["nfe"], spec["seed"], spec["dtype"]) == ("auto", 10, 0, "float32")
    assert doc["num_samples"] == 40 and doc["seeds"]["base"] == 0
    assert {p.name for p in tmp_path.iterdir()} == {".lock", "manifest.json"} | {
        s["file"] for s in doc["shards"]
    }
    got = load_samples(tmp_path)
    model = problem("gmm-vp", dim=3, components=2).model()
    shard = sample_indices(model, range(16, 32), Sampler(), seed=0, shape=(3,), batch_size=7)
    assert torch.equal(got.indices, torch.arange(40))
    assert torch.equal(got.samples[16:32], shard.samples)
    assert got.samples.dtype == torch.float32


def test_an_interrupted_run_resumes_to_the_same_final_set(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    generate(out=whole, num_samples=50, shard_size=10, batch_size=4, **GMM)

    def stop_after_two(record):
        if record["stop"] >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(
            out=part, num_samples=50, shard_size=10, batch_size=4, on_shard=stop_after_two, **GMM
        )
    assert len(manifest(part)["shards"]) == 2
    first = ["samples-000000000-000000010.safetensors", "samples-000000010-000000020.safetensors"]
    before = {f: (part / f).stat() for f in first}
    # What a killed process can leave: a temporary file and a shard it never recorded.
    (part / ".samples-000000020-000000030.safetensors.abc123.tmp").write_bytes(b"partial")
    (part / "samples-000000040-000000050.safetensors").write_bytes(b"unrecorded")
    with pytest.warns(UserWarning, match="not in the manifest"):
        result = generate(out=part, num_samples=50, batch_size=4, **GMM)
    assert (result.generated, result.reused) == (30, 20)
    assert checksums(part) == checksums(whole)
    for f, stat in before.items():  # kept, not rewritten
        assert (part / f).stat().st_mtime_ns == stat.st_mtime_ns
        assert (part / f).stat().st_ino == stat.st_ino
    assert not list(part.glob(".*.tmp"))
    assert generate(out=part, num_samples=50, **GMM).generated == 0


def test_damaged_and_missing_shards_are_detected_and_regenerated(tmp_path):
    generate(out=tmp_path, num_samples=30, shard_size=10, **GMM)
    good = checksums(tmp_path)
    damaged = tmp_path / "samples-000000010-000000020.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (tmp_path / "samples-000000020-000000030.safetensors").unlink()
    with pytest.raises(ShardError, match="does not match its checksum"):
        load_samples(tmp_path)
    with pytest.warns(UserWarning) as caught:
        result = generate(out=tmp_path, num_samples=30, **GMM)
    messages = " ".join(str(w.message) for w in caught)
    assert "does not match its checksum" in messages and "is missing" in messages
    assert (result.generated, result.reused) == (20, 10)
    assert checksums(tmp_path) == good
    assert load_samples(tmp_path).samples.shape == (30, 3)


def test_a_directory_of_another_configuration_is_refused(tmp_path):
    generate(out=tmp_path, num_samples=12, shard_size=8, **GMM)
    good = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(ArgumentError, match=r"another configuration \(seed: 0 there, 1 now\)"):
        generate(out=tmp_path, num_samples=12, seed=1, **GMM)
    with pytest.raises(ArgumentError, match="shard_size: 8 there, 4 now"):
        generate(out=tmp_path, num_samples=12, shard_size=4, **GMM)
    with pytest.raises(ArgumentError, match="model_options"):
        generate("gmm-vp", tmp_path, 12, model_options={"dim": 4}, progress=False)
    assert (tmp_path / "manifest.json").read_bytes() == good
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    with pytest.raises(ArgumentError, match="not a fewstep-generation/1 manifest"):
        generate(out=other, num_samples=4, **GMM)


def test_a_larger_count_extends_the_directory_with_the_same_samples(tmp_path):
    generate(out=tmp_path / "a", num_samples=20, shard_size=16, **GMM)
    result = generate(out=tmp_path / "a", num_samples=36, **GMM)
    assert (result.generated, result.reused) == (16, 20)
    assert [s["stop"] for s in manifest(tmp_path / "a")["shards"]] == [16, 20, 32, 36]
    generate(out=tmp_path / "b", num_samples=36, shard_size=16, **GMM)
    a, b = load_samples(tmp_path / "a"), load_samples(tmp_path / "b")
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-6)


def test_a_tuned_config_and_a_stochastic_solver_are_part_of_the_spec(tmp_path):
    model = problem("gmm-vp", dim=3, components=2).model()
    config = SamplerConfig("ddim", {}, [999.0, 600.0, 250.0], 3, model.schedule.config(), "epsilon")
    config.save(tmp_path / "tuned.json")
    generate(out=tmp_path / "c", num_samples=6, config=tmp_path / "tuned.json", **GMM)
    doc = manifest(tmp_path / "c")
    assert doc["config_sha256"] and doc["spec"]["config"]["times"] == config.times
    noise = index_noise((3,), range(6), seed=0)
    expected = fewstep.sample(model, noise, config=config)
    assert torch.equal(load_samples(tmp_path / "c").samples, expected)

    generate(out=tmp_path / "s", num_samples=6, solver="ddpm", nfe=4, **GMM)
    seeds = [fewstep.noise.derive_seed(0, i, 1) for i in range(6)]
    expected = fewstep.sample(model, noise, solver="ddpm", nfe=4, seed=seeds)
    assert torch.equal(load_samples(tmp_path / "s").samples, expected)


def test_a_directory_whose_first_run_recorded_nothing_is_taken_over(tmp_path):
    with pytest.raises(ArgumentError, match="needs a model with a num_classes"):
        generate(
            out=tmp_path,
            num_samples=4,
            model="test_generate:flaky_gmm",
            labels="cycle",
            model_options={"marker": str(tmp_path / "none"), "log": str(tmp_path / "log")},
            progress=False,
        )
    assert manifest(tmp_path)["shards"] == []
    assert generate(out=tmp_path, num_samples=4, **GMM).generated == 4


def test_a_trained_model_is_named_by_its_json_path(tmp_path):
    from fewstep.generation import make_spec
    from fewstep.models import WEIGHTS_DIR

    by_path = make_spec(str(WEIGHTS_DIR / "digits-flow.json"))
    assert by_path.weights_sha256 == make_spec("digits-flow").weights_sha256
    assert by_path.labels == "cycle"
    model, shape = by_path.load_model()
    assert model.name == "digits-flow" and shape == (1, 16, 16)
    with pytest.raises(Exception, match="fewstep train digits-dit"):
        make_spec(str(tmp_path / "digits-dit.json"))


def test_missing_ranges_follow_shard_boundaries():
    assert missing_ranges(25, 10, []) == [(0, 10), (10, 20), (20, 25)]
    assert missing_ranges(25, 10, [(0, 10), (20, 23)]) == [(10, 20), (23, 25)]
    assert missing_ranges(36, 16, [(0, 16), (16, 20)]) == [(20, 32), (32, 36)]


def test_bad_arguments_name_the_argument_and_the_fix(tmp_path):
    cases = [
        ({"model": "mnist-unet"}, "model: unknown 'mnist-unet'"),
        ({"model": "nowhere.module:make"}, "cannot import"),
        ({"solver": "dpm_adaptive"}, "solver: 'dpm_adaptive' is adaptive"),
        ({"guidance": 3.0}, "guidance: needs labels"),
        ({"labels": "cycle"}, "labels: 'gmm-vp' is unconditional"),
        ({"num_samples": 0}, "num_samples: must be an integer >= 1"),
        ({"dtype": "float16"}, "dtype: unknown"),
        ({"steps": 5}, r"generate options: unknown \['steps'\]"),
    ]
    for change, message in cases:
        kwargs = {**GMM, "out": tmp_path / "x", "num_samples": 4, **change}
        with pytest.raises(ArgumentError, match=message):
            generate(**kwargs)
        assert not (tmp_path / "x").exists()  # nothing left behind by a refused run
    with (
        manifest_module.lock(tmp_path / "busy"),
        pytest.raises(ArgumentError, match="another generate run"),
    ):
        generate(out=tmp_path / "busy", num_samples=4, **GMM)


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ArgumentError, match=r"pip install fewstep\[ray\]"):
        generate(out=tmp_path, num_samples=4, ray=True, **GMM)


def test_the_generate_command(tmp_path, capsys):
    parser = build_parser()
    argv = ["generate", "--model", "gmm-flow", "--model-option", "dim=3"]
    argv += ["--num-samples", "10", "--out", str(tmp_path), "--nfe", "4", "--shard-size", "4"]
    assert main([*argv, "--no-progress"]) == 0
    assert "10 samples in 3 shards (10 generated, 0 already there)" in capsys.readouterr().out
    assert manifest(tmp_path)["spec"]["model_options"]["dim"] == 3
    assert main([*argv, "--no-progress"]) == 0
    assert "(0 generated, 10 already there)" in capsys.readouterr().out
    assert parser.parse_args(argv).ray is None
    assert parser.parse_args([*argv, "--ray"]).ray is True
    assert parser.parse_args([*argv, "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"
    assert main([*argv, "--seed", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another configuration (seed: 0 there, 1 now)" in err and "use another --out" in err


# -- Ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    tests = str(Path(__file__).parent)  # workers import flaky_gmm from this module
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


@pytest.mark.parametrize(
    "options",
    [DIGITS, {**GMM, "solver": "euler_ancestral", "nfe": 4, "shard_size": 5, "threads": 1}],
    ids=["digits-unet", "gmm-stochastic"],
)
def test_ray_gives_the_in_process_samples_bit_for_bit(ray_cluster, tmp_path, options):
    on_ray = generate(out=tmp_path / "ray", num_samples=20, ray=True, **options)
    local = generate(out=tmp_path / "local", num_samples=20, **options)
    assert on_ray.generated == local.generated == 20
    assert checksums(tmp_path / "ray") == checksums(tmp_path / "local")
    a, b = load_samples(tmp_path / "ray"), load_samples(tmp_path / "local")
    assert torch.equal(a.samples, b.samples) and torch.equal(a.indices, torch.arange(20))
    assert generate(out=tmp_path / "ray", num_samples=20, ray=True, **options).generated == 0


@pytest.mark.parametrize("fail", ["raise", "exit"])
def test_a_failed_ray_task_is_retried_and_no_index_is_lost(ray_cluster, tmp_path, fail):
    marker, log = tmp_path / "fail-once", tmp_path / "loads"
    marker.touch()
    options = {
        "model": "test_generate:flaky_gmm",
        "model_options": {"marker": str(marker), "log": str(log), "fail": fail},
        "shard_size": 4,
        "threads": 1,
    }
    result = generate(out=tmp_path / "ray", num_samples=12, ray=True, retries=2, **options)
    assert not marker.exists()  # the failure happened
    assert result.generated == 12
    loads = log.read_text().split()  # one model per worker process, loaded once
    assert len(loads) == len(set(loads)) and len(loads) <= 2 + (fail == "exit")
    got = load_samples(tmp_path / "ray")
    assert got.indices.tolist() == list(range(12))  # each index exactly once
    generate(out=tmp_path / "local", num_samples=12, progress=False, **options)
    assert torch.equal(got.samples, load_samples(tmp_path / "local").samples)


def test_a_deterministic_error_on_ray_is_raised_not_retried(ray_cluster, tmp_path):
    """A non-finite model output fails the same way on every retry: the driver raises it
    (typed, with its step) after one attempt."""
    log = tmp_path / "calls"
    options = {"model": "test_generate:nan_gmm", "model_options": {"log": str(log)}}
    with pytest.raises(fewstep.NonFiniteError, match="step 0"):
        generate(out=tmp_path / "ray", num_samples=4, shard_size=4, ray=True, retries=3, **options)
    assert log.read_text().split() == ["call"]


def test_fewstep_errors_survive_pickling():
    import pickle

    for err in (
        fewstep.ArgumentError("nfe", "must be positive", "pass nfe >= 1"),
        fewstep.NonFiniteError(3, 0.25),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
