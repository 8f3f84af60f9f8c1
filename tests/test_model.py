"""Layer 2: parameterizations, guidance, thresholding, NFE accounting, input errors."""

import warnings

import pytest
import torch

import fewstep
from fewstep.errors import ArgumentError, ModelOutputError
from fewstep.reference import GaussianMixture

SCHEDULES = [
    fewstep.VPSchedule.scaled_linear(),
    fewstep.LinearVPSchedule(),
    fewstep.CosineVPSchedule(),
    fewstep.EDMSchedule(0.002, 80.0),
    fewstep.FlowSchedule(shift=3.0),
]


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(dim=8, components=3, seed=1)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_every_parameterization_gives_the_same_predictions(gmm, schedule):
    g = torch.Generator().manual_seed(0)
    n = 16
    t = (
        schedule.t_min
        + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=g, dtype=torch.float64) * 0.98
    )
    alpha, sigma = schedule.alpha_sigma(t)
    x0 = gmm.sample(n, seed=2)
    x = alpha[:, None] * x0 + sigma[:, None] * torch.randn(n, 8, generator=g, dtype=torch.float64)
    exact = gmm.denoise(x, alpha, sigma)
    for prediction in fewstep.model.PREDICTIONS:
        pred = gmm.model(schedule, prediction).predict(x, t)
        torch.testing.assert_close(pred.data, exact, rtol=1e-9, atol=1e-9, msg=prediction)
        torch.testing.assert_close(x, alpha[:, None] * pred.data + sigma[:, None] * pred.noise)


def test_model_counts_calls_and_passes_native_time(gmm):
    seen = []
    sch = fewstep.VPSchedule.scaled_linear()
    inner = gmm.prediction_fn(sch, "epsilon")

    def fn(x, t):
        seen.append(t.clone())
        return inner(x, t)

    model = fewstep.Model(fn, sch, "epsilon")
    x = torch.randn(4, 8)
    model.predict(x, 500.5)
    model.predict(x, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert model.nfe == 2
    assert seen[0].shape == (4,) and float(seen[0][0]) == 500.5 and seen[0].dtype == torch.float32
    assert seen[1].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_guidance_is_one_batched_call_and_combines_outputs():
    calls = []

    def fn(x, t, y):
        calls.append(x.shape[0])
        return x * 0 + y.view(-1, 1).to(x.dtype)  # output = the label, broadcast

    sch = fewstep.FlowSchedule()
    model = fewstep.Model(fn, sch, "flow", guidance_scale=3.0)
    x = torch.randn(2, 5, dtype=torch.float64)
    pred = model.predict(
        x, 0.5, cond={"y": torch.tensor([2, 4])}, uncond={"y": torch.tensor([1, 1])}
    )
    assert calls == [4] and model.nfe == 1
    guided = 1 + 3.0 * (torch.tensor([2.0, 4.0]) - 1)  # u + s (c - u)
    torch.testing.assert_close(pred.data, x - 0.5 * guided.view(-1, 1).expand(2, 5).double())


def test_guidance_rescale_matches_its_definition():
    g = fewstep.guidance.Guidance(scale=5.0, rescale=0.7)
    u, c = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    cfg = u + 5 * (c - u)
    std = lambda v: v.std(dim=(1, 2), keepdim=True)  # noqa: E731
    expected = 0.7 * cfg * std(c) / std(cfg) + 0.3 * cfg
    torch.testing.assert_close(g.combine(u, c), expected)


def test_guidance_needs_uncond(gmm):
    model = gmm.model(fewstep.FlowSchedule(), "flow", guidance_scale=2.0)
    with pytest.raises(ArgumentError, match="uncond"):
        fewstep.sample(model, torch.randn(2, 8), nfe=3)


def test_class_inputs_give_the_unconditional_branch_the_null_class(gmm):
    labels = torch.tensor([0, 3, 7])
    model = gmm.model(fewstep.FlowSchedule(), "flow")
    assert fewstep.guidance.class_inputs(model, labels) == ({"y": labels}, None)
    model.null_class = 10
    cond, uncond = fewstep.guidance.class_inputs(model, labels)
    assert cond["y"] is labels and torch.equal(uncond["y"], torch.full((3,), 10))


def test_dynamic_thresholding_clips_and_stays_consistent():
    sch = fewstep.VPSchedule.scaled_linear()
    model = fewstep.Model(
        lambda x, t: 3 * x, sch, "sample", thresholding=fewstep.DynamicThresholding(0.9, 2.0)
    )
    x = torch.randn(4, 100, dtype=torch.float64)
    t = 300.0
    pred = model.predict(x, t)
    assert float(pred.data.abs().max()) <= 1.0 + 1e-12
    alpha, sigma = (float(v) for v in sch.alpha_sigma(t))
    torch.testing.assert_close(x, alpha * pred.data + sigma * pred.noise)


def test_float16_models_get_cast_inputs(gmm):
    sch = fewstep.EDMSchedule()
    inner = gmm.prediction_fn(sch, "sample")
    dtypes = []

    def fn(x, t):
        dtypes.append(x.dtype)
        return inner(x.float(), t).half()

    model = fewstep.Model(fn, sch, "sample", dtype=torch.float16)
    out = fewstep.sample(model, torch.randn(2, 8), nfe=3)
    assert dtypes == [torch.float16] * 3 and out.dtype == torch.float32


def test_bad_model_output_and_arguments():
    sch = fewstep.EDMSchedule()
    with pytest.raises(ModelOutputError, match="shaped like x"):
        fewstep.Model(lambda x, t: x[:, :2], sch, "sample").predict(torch.randn(2, 4), 1.0)
    with pytest.raises(ArgumentError, match="prediction"):
        fewstep.Model(lambda x, t: x, sch, "velocity")
    eps_on_flow = fewstep.Model(lambda x, t: x, fewstep.FlowSchedule(), "epsilon")
    with pytest.raises(ArgumentError, match="zero SNR"):
        fewstep.sample(eps_on_flow, torch.randn(2, 4), nfe=3)
    fewstep.sample(eps_on_flow, torch.randn(2, 4), nfe=3, spacing=[0.9, 0.5, 0.001])
    with pytest.raises(ArgumentError, match="schedule"):
        fewstep.Model(lambda x, t: x, "edm", "sample")


class _Net(torch.nn.Module):
    """A tiny network with a mode-dependent layer (``layer``) and a harmless one."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.linear, self.layer, self.off = torch.nn.Linear(4, 4), layer, torch.nn.Dropout(0.0)

    def forward(self, x, t):
        return self.off(self.layer(self.linear(x)))


@pytest.mark.parametrize("layer", [torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(4)])
def test_a_network_in_training_mode_is_warned_about(layer):
    """Dropout or batch statistics in training mode make samples random and batch-dependent:
    sampling says so once it starts; in eval mode, or with only p=0 dropout, it is silent."""
    net = _Net(layer)
    noise = fewstep.randn((8, 4), seed=0)
    for fn in (net, net.forward):  # the module, or a bound method of it
        model = fewstep.Model(fn, fewstep.FlowSchedule(), "flow")
        with pytest.warns(UserWarning, match=r"training mode.*'layer'.*\.eval\(\)"):
            fewstep.sample(model, noise, solver="euler", nfe=2)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fewstep.sample(fewstep.Model(net, fewstep.FlowSchedule(), "flow"), noise, nfe=2)
        net.layer = torch.nn.Identity()
        net.train()  # only the p=0 dropout is left in training mode
        fewstep.sample(fewstep.Model(net, fewstep.FlowSchedule(), "flow"), noise, nfe=2)
