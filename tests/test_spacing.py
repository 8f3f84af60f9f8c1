"""Layer 3: every spacing gives a valid grid, and the peers' grids where they define one."""

import numpy as np
import pytest
import torch
from peers import diffusers, k_diffusion_sampling

import fewstep
from fewstep.errors import ArgumentError
from fewstep.spacing import SPACINGS, FlowShift, Karras, Table, resolve_spacing, shift_time

VP = fewstep.VPSchedule.scaled_linear()
EDM = fewstep.EDMSchedule(0.002, 80.0)
FLOW = fewstep.FlowSchedule(shift=3.0)

VALID = (
    [(VP, name) for name in SPACINGS if name != "flow_shift"]
    + [(EDM, n) for n in ("time_uniform", "logsnr", "karras", "time_quadratic")]
    + [(FLOW, n) for n in ("time_uniform", "time_quadratic", "flow_shift")]
)


@pytest.mark.parametrize(
    "schedule,name", VALID, ids=lambda v: v if isinstance(v, str) else type(v).__name__
)
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_grids_are_decreasing_and_in_range(schedule, name, n):
    t = resolve_spacing(name, schedule).times(schedule, n)
    assert t.shape == (n,) and t.dtype == torch.float64
    fewstep.spacing.check_grid(schedule, t)
    if name not in ("leading", "trailing") and not (name == "linspace" and n == 1):
        assert float(t[0]) == schedule.t_max
        if n > 1:
            assert float(t[-1]) == schedule.t_min


@pytest.mark.parametrize("kind", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [4, 10, 25, 50])
def test_discrete_spacings_equal_diffusers(kind, n):
    d = diffusers()
    sched = d.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing=kind,
        steps_offset=1,
    )
    sched.set_timesteps(n)
    ours = resolve_spacing(kind, VP).times(VP, n)
    np.testing.assert_array_equal(ours.numpy(), sched.timesteps.numpy().astype(np.float64))


def test_karras_and_logsnr_equal_k_diffusion_sigmas():
    kd = k_diffusion_sampling()
    for spacing, peer in (("karras", kd.get_sigmas_karras), ("logsnr", kd.get_sigmas_exponential)):
        for sch in (EDM, VP):
            lo, hi = float(sch.edm_sigma(sch.t_min)), float(sch.edm_sigma(sch.t_max))
            ours = sch.edm_sigma(resolve_spacing(spacing, sch).times(sch, 12))
            ref = peer(12, lo, hi).double()[:-1]
            torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)


def test_logsnr_is_uniform_in_lambda():
    lam = VP.lam(resolve_spacing("logsnr", VP).times(VP, 9))
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-9, atol=0)


def test_flow_shift_warps_uniform_time():
    t = FlowShift().times(FLOW, 6)
    u = t / (3 - 2 * t)  # inverse shift
    du = u[1:] - u[:-1]
    torch.testing.assert_close(du, du.mean().expand_as(du), rtol=1e-9, atol=0)
    assert shift_time(0.5, 3.0) == 0.75


def test_table_interpolates_log_linearly_like_align_your_steps():
    ays = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    lo, hi = float(VP.edm_sigma(0.0)), float(VP.edm_sigma(999.0))
    clamped = np.clip(ays, lo, hi)  # the published table is rounded past SD's range
    t = Table(tuple(ays)).times(VP, 11)
    np.testing.assert_allclose(VP.edm_sigma(t).numpy(), clamped, rtol=1e-9)
    sig = VP.edm_sigma(Table(tuple(ays)).times(VP, 21)).numpy()
    np.testing.assert_allclose(sig[::2], clamped, rtol=1e-9)
    np.testing.assert_allclose(sig[1], np.sqrt(clamped[0] * clamped[1]), rtol=1e-9)
    with pytest.raises(ArgumentError, match="outside"):
        Table((100.0, 1.0)).times(VP, 5)


def test_spacing_errors_name_the_argument():
    with pytest.raises(ArgumentError, match="spacing: unknown"):
        resolve_spacing("uniformish", VP)
    with pytest.raises(ArgumentError, match="zero SNR"):
        Karras().times(FLOW, 5)
    with pytest.raises(ArgumentError, match="discrete VP"):
        resolve_spacing("trailing", EDM).times(EDM, 5)
    with pytest.raises(ArgumentError, match="strictly decreasing"):
        fewstep.spacing.check_grid(VP, torch.tensor([999.0, 500.0, 600.0], dtype=torch.float64))
    with pytest.raises(ArgumentError, match="strictly decreasing"):
        fewstep.sample(
            fewstep.Model(lambda x, t: x, VP), torch.randn(1, 2), nfe=2000, spacing="linspace"
        )
    with pytest.raises(ArgumentError, match=r"Table\.values"):
        Table((1.0, 2.0))
