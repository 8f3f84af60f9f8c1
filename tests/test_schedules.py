"""Layer 1: schedule identities, inverses, derivatives, and agreement with the peers' tables."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import diffusers

import fewstep
from fewstep.errors import ArgumentError
from fewstep.schedules import schedule_from_config

SCHEDULES = {
    "vp_scaled_linear": fewstep.VPSchedule.scaled_linear(),
    "vp_linear_discrete": fewstep.VPSchedule.linear(),
    "vp_cosine_discrete": fewstep.VPSchedule.squaredcos_cap_v2(),
    "vp_zero_snr": fewstep.VPSchedule.scaled_linear(rescale_zero_terminal_snr=True),
    "vp_linear": fewstep.LinearVPSchedule(),
    "vp_cosine": fewstep.CosineVPSchedule(),
    "edm": fewstep.EDMSchedule(0.002, 80.0),
    "flow": fewstep.FlowSchedule(),
    "flow_shift3": fewstep.FlowSchedule(shift=3.0),
}

unit = st.floats(0.0, 1.0, allow_nan=False)


def _times(schedule, u):
    # interior times, away from a zero-SNR end where lambda is -inf
    return schedule.t_min + (schedule.t_max - schedule.t_min) * (0.999 * u)


@pytest.mark.parametrize("name", SCHEDULES)
@settings(max_examples=60, deadline=None)
@given(u=unit)
def test_lambda_inverse_round_trip(name, u):
    sch = SCHEDULES[name]
    t = torch.tensor([_times(sch, u)], dtype=torch.float64)
    lam = sch.lam(t)
    back = sch.t_of_lam(lam)
    scale = max(1.0, sch.t_max)
    assert abs(float(back - t)) <= 1e-9 * scale
    assert abs(float(sch.lam(back) - lam)) <= 1e-9 * max(1.0, abs(float(lam)))


@pytest.mark.parametrize("name", SCHEDULES)
@settings(max_examples=40, deadline=None)
@given(u=unit)
def test_alpha_sigma_lambda_consistent(name, u):
    sch = SCHEDULES[name]
    t = torch.tensor([_times(sch, u)], dtype=torch.float64)
    alpha, sigma = sch.alpha_sigma(t)
    assert float(alpha) > 0 and float(sigma) > 0
    assert math.isclose(
        float(torch.log(alpha / sigma)), float(sch.lam(t)), rel_tol=1e-12, abs_tol=1e-12
    )
    assert math.isclose(float(sch.edm_sigma(t)), float(sigma / alpha), rel_tol=1e-12)
    if sch.variance_preserving:
        assert math.isclose(float(alpha**2 + sigma**2), 1.0, rel_tol=1e-14)


@pytest.mark.parametrize("name", SCHEDULES)
def test_lambda_decreases_in_time(name):
    sch = SCHEDULES[name]
    t = torch.linspace(sch.t_min, sch.t_max, 997, dtype=torch.float64)
    lam = sch.lam(t)
    assert bool(torch.all(lam[1:] < lam[:-1]))


@pytest.mark.parametrize("name", SCHEDULES)
def test_derivatives_match_finite_differences(name):
    sch = SCHEDULES[name]
    # midpoints of integer segments for the discrete ones (derivative is piecewise constant)
    t = torch.linspace(sch.t_min, sch.t_max, 41, dtype=torch.float64)[1:-1]
    if isinstance(sch, fewstep.VPSchedule):
        t = t.floor() + 0.5
    h = 1e-6 * max(1.0, sch.t_max)
    da, ds = sch.alpha_sigma_derivative(t)
    a1, s1 = sch.alpha_sigma(t + h)
    a0, s0 = sch.alpha_sigma(t - h)
    torch.testing.assert_close(da, (a1 - a0) / (2 * h), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ds, (s1 - s0) / (2 * h), rtol=1e-5, atol=1e-8)


def test_discrete_vp_hits_table_at_integer_steps():
    sch = fewstep.VPSchedule.scaled_linear()
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(sch.alpha(t) ** 2, sch.alphas_cumprod, rtol=1e-12, atol=0)


def test_discrete_vp_interpolates_log_sigma():
    sch = fewstep.VPSchedule.scaled_linear()
    log_sigmas = 0.5 * np.log((1 - sch.alphas_cumprod.numpy()) / sch.alphas_cumprod.numpy())
    t = np.array([0.25, 10.5, 500.75, 998.5])
    expected = np.interp(t, np.arange(1000), log_sigmas)
    np.testing.assert_allclose(np.log(sch.edm_sigma(t).numpy()), expected, rtol=1e-12)


def test_scaled_linear_equals_diffusers_table():
    d = diffusers()
    ref = d.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = fewstep.VPSchedule.scaled_linear()
    np.testing.assert_array_equal(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy())


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_other_tables_equal_diffusers(beta_schedule):
    d = diffusers()
    ref = d.DDIMScheduler(beta_schedule=beta_schedule)
    ours = getattr(fewstep.VPSchedule, beta_schedule)()
    np.testing.assert_allclose(
        ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-6
    )


def test_zero_terminal_snr_equals_diffusers_and_is_continuous():
    d = diffusers()
    ref = d.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
    )
    ours = fewstep.VPSchedule.scaled_linear(rescale_zero_terminal_snr=True)
    np.testing.assert_allclose(
        ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-7
    )
    assert float(ours.alpha(999.0)) == 0.0 and math.isinf(float(ours.lam(999.0)))
    t = torch.linspace(998.0, 999.0, 11, dtype=torch.float64)
    alpha = ours.alpha(t)
    assert bool(torch.all(alpha[1:] < alpha[:-1]))
    assert abs(float(alpha[0]) - math.sqrt(float(ours.alphas_cumprod[998]))) < 1e-15


def test_continuous_linear_vp_closed_form():
    sch = fewstep.LinearVPSchedule(0.1, 20.0)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    log_alpha = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    torch.testing.assert_close(sch.alpha(t), log_alpha.exp(), rtol=1e-14, atol=0)


def test_flow_and_edm_are_their_definitions():
    flow = fewstep.FlowSchedule()
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    a, s = flow.alpha_sigma(t)
    torch.testing.assert_close(a, 1 - t)
    torch.testing.assert_close(s, t)
    assert float(flow.alpha(1.0)) == 0.0
    edm = fewstep.EDMSchedule(0.002, 80)
    a, s = edm.alpha_sigma(t)
    torch.testing.assert_close(s, t)
    assert edm.initial_scale(80.0) == 80.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_config_round_trip(name):
    sch = SCHEDULES[name]
    again = schedule_from_config(sch.config())
    t = torch.linspace(sch.t_min, sch.t_max, 7, dtype=torch.float64)
    torch.testing.assert_close(again.lam(t), sch.lam(t))


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ArgumentError, match="betas"):
        fewstep.VPSchedule.from_betas([0.1, 1.5])
    with pytest.raises(ArgumentError, match="t: times must lie"):
        fewstep.VPSchedule.scaled_linear().lam(1000.0)
    with pytest.raises(ArgumentError, match="sigma_min"):
        fewstep.EDMSchedule(1.0, 0.5)
    with pytest.raises(ArgumentError, match="shift"):
        fewstep.FlowSchedule(shift=0)
