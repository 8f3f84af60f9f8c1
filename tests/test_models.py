"""The shipped digits models: checksums, recorded outputs, loading, training."""

import hashlib
import json
import shutil

import pytest
import torch

import fewstep
from fewstep import models
from fewstep.errors import ArgumentError
from fewstep.models.data import load_digits
from fewstep.models.dit import DiTBlock
from fewstep.models.specs import CLASSIFIER, GENERATORS, RECIPES
from fewstep.models.store import WEIGHTS_DIR, check_input, fingerprint, paths, read_info
from fewstep.models.train import train

ALL = (*GENERATORS, CLASSIFIER)


def test_the_split_is_fixed_stratified_and_disjoint():
    train_, test = load_digits("train"), load_digits("test")
    assert train_.images.shape == (1437, 1, 16, 16) and test.images.shape == (360, 1, 16, 16)
    assert train_.images.min() == -1 and train_.images.max() == 1
    counts = torch.bincount(test.labels)
    assert counts.min() >= 35 and counts.max() <= 37
    everything = load_digits("all")
    assert len(everything.images) == 1797
    torch.testing.assert_close(everything.images[1437:], test.images)
    with pytest.raises(ArgumentError, match="split"):
        load_digits("valid")


@pytest.mark.parametrize("name", ALL)
def test_shipped_weights_match_their_checksum_and_size_limit(name):
    weights, info_path = paths(name)
    info = json.loads(info_path.read_text())
    data = weights.read_bytes()
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    assert len(data) == info["bytes"] <= 5_000_000
    assert info["training"]["steps_done"] == RECIPES[name].steps  # the recipe, not stopped early
    assert info["recipe"] == RECIPES[name].as_dict()


@pytest.mark.parametrize("name", ALL)
def test_loading_reproduces_the_recorded_output(name):
    network = models.load_classifier() if name == CLASSIFIER else models.load(name).network
    recorded = read_info(name)["check"]
    schedule = read_info(name)["recipe"]["schedule"]
    got = fingerprint(network, schedule)
    torch.testing.assert_close(
        torch.tensor(got["head"]), torch.tensor(recorded["head"]), rtol=1e-4, atol=1e-4
    )
    assert got["rms"] == pytest.approx(recorded["rms"], rel=1e-4)
    assert got["mean"] == pytest.approx(recorded["mean"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("name", GENERATORS)
def test_load_gives_a_ready_model(name):
    model = models.load(name, guidance_scale=3.0)
    assert isinstance(model, fewstep.Model)
    assert model.name == name and model.guidance.scale == 3.0
    assert (model.image_shape, model.num_classes, model.null_class) == ((1, 16, 16), 10, 10)
    assert not model.network.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.network.parameters())
    schedule = fewstep.FlowSchedule if name == "digits-flow" else fewstep.VPSchedule
    assert isinstance(model.schedule, schedule)
    assert model.prediction == RECIPES[name].prediction
    x = check_input(RECIPES[name].schedule)
    null = torch.full_like(x["y"], model.null_class)
    # float64 sampling state in, the float32 network inside, float64 out
    pred = model.predict(x["x"].double(), x["t"], cond={"y": x["y"]}, uncond={"y": null})
    assert pred.data.shape == x["x"].shape and pred.data.dtype == torch.float64
    assert torch.isfinite(pred.data).all() and torch.isfinite(pred.noise).all()


def test_the_dit_exposes_identical_blocks():
    blocks = models.load("digits-dit").network.blocks
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 6
    assert all(type(b) is DiTBlock for b in blocks)
    shapes = {tuple((k, tuple(v.shape)) for k, v in b.state_dict().items()) for b in blocks}
    assert len(shapes) == 1


def test_the_classifier_reaches_its_recorded_held_out_accuracy():
    classifier = models.load_classifier()
    test = load_digits("test")
    with torch.no_grad():
        accuracy = (classifier(test.images).argmax(1) == test.labels).float().mean().item()
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(classifier.info["held_out"]["accuracy_test"], abs=1e-6)


def test_guided_samples_are_the_digits_asked_for():
    model = models.load("digits-unet", guidance_scale=2.0)
    y = torch.arange(20) % 10
    noise = fewstep.randn((20, *model.image_shape), seed=1)
    x = fewstep.sample(model, noise, nfe=10, cond={"y": y}, uncond={"y": torch.full_like(y, 10)})
    with torch.no_grad():
        predicted = models.load_classifier()(x.clamp(-1, 1)).argmax(1)
    assert (predicted == y).float().mean() >= 0.9


def test_unknown_names_and_bad_weights_are_typed_errors(tmp_path):
    with pytest.raises(ArgumentError, match="digits-unet"):
        models.load("mnist-unet")
    with pytest.raises(ArgumentError, match="load_classifier"):
        models.load(CLASSIFIER)
    with pytest.raises(models.WeightsError, match="fewstep train digits-unet"):
        models.load("digits-unet", directory=tmp_path)
    for path in paths("digits-unet"):
        shutil.copy(path, tmp_path / path.name)
    weights = tmp_path / "digits-unet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(models.WeightsError, match="sha256"):
        models.load("digits-unet", directory=tmp_path)


def test_training_is_deterministic_and_loadable(tmp_path):
    first = train("digits-classifier", tmp_path / "a", steps=3, progress=False)
    second = train("digits-classifier", tmp_path / "b", steps=3, progress=False)
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["sha256"] == b["sha256"] and a["check"] == b["check"]
    assert a["training"]["command"] == "fewstep train digits-classifier --seed 0 --steps 3"
    info = train("digits-flow", tmp_path, steps=2, seed=5, progress=False)
    model = models.load("digits-flow", directory=tmp_path)
    assert model.info["training"]["seed"] == 5 and info.parent == tmp_path
    assert set(model.info["held_out"]) == {"denoising_loss_test", "denoising_loss_train"}


def test_a_wall_clock_limit_stops_early_and_says_so(tmp_path):
    info = json.loads(train("digits-dit", tmp_path, minutes=1e-6, progress=False).read_text())
    assert info["training"]["steps_done"] == 1 and info["training"]["stopped_early"]
    with pytest.raises(ArgumentError, match="minutes"):
        train("digits-dit", tmp_path, minutes=0)


def test_weights_live_in_the_package():
    assert WEIGHTS_DIR.parent.name == "models" and WEIGHTS_DIR.name == "weights"
    assert set(models.available()) == {"digits-unet", "digits-dit", "digits-flow"}
