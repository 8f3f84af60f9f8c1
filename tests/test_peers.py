"""Side by side with the peers: where diffusers or k-diffusion implement the same algorithm,
fewstep's output equals theirs on identical float64 inputs (same grid, same start).

Documented deviations of the peers, tested here as such:
- the third-order multistep DPM-Solver(++) update of diffusers, k-diffusion and the
  reference code halves its second-derivative term; fewstep's ``solver_type="midpoint"`` /
  ``"heun"`` reproduce it, the default ``"exact"`` is truly third order (test_solvers.py);
- diffusers' DEIS never steps to sigma = 0: its output is the noisy state at the smallest
  sigma, compared here with fewstep's state there;
- diffusers' UniPC with ``bh1`` returns NaN on its final step to sigma = 0 (B(h) = -inf
  times a zero residual); fewstep never steps to sigma = 0;
- diffusers' DDIM computes its coefficients from a float32 table: given the float64 table,
  it agrees to float64 precision.
"""

import warnings

import pytest
import torch

import fewstep
from fewstep.reference import problem
from fewstep.reference.peers import (
    PeerUnavailable,
    diffusers_scheduler,
    kdiffusion_sigmas,
    run_diffusers,
    run_kdiffusion,
)
from fewstep.spacing import Karras

N = 9  # grid points: below 15, where diffusers applies its lower-order final steps


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def setups():
    out = {}
    for name in ("gmm-vp", "gmm-edm"):
        pb = problem(name, dim=8, components=3, seed=2)
        times = Karras().times(pb.schedule, N)
        out[name] = (pb, pb.model(), pb.noise(4, seed=1), times)
    return out


@pytest.fixture(autouse=True)
def _peers_present():
    try:
        fewstep.reference.peers.kdiffusion_sampling()
        fewstep.reference.peers.diffusers_module()
    except PeerUnavailable as err:
        pytest.skip(str(err))
    warnings.filterwarnings("ignore")


def _midpoints(schedule, times):
    """k-diffusion's two-call samplers evaluate at the log-sigma midpoint of each step;
    fewstep's singlestep solvers take those points from the grid."""
    s = schedule.edm_sigma(times)
    mids = (0.5 * (s[:-1].log() + s[1:].log())).exp()
    sig = [*torch.stack([s[:-1], mids], 1).flatten().tolist(), float(s[-1])]
    t = schedule.t_of_edm_sigma(torch.tensor(sig, dtype=torch.float64))
    t[0], t[-1] = times[0], times[-1]
    return t


K_CASES = [
    ("euler", "euler", {}, N, False),
    ("dpmpp_2m", "dpmpp_2m", {"lower_order_final": False}, N, False),
    ("dpmpp_3m", "dpmpp_3m", {"solver_type": "heun", "lower_order_final": False}, N, False),
    ("heun", "heun", {}, 2 * N - 1, False),
    ("dpm2", "dpm_2", {}, 2 * N - 1, True),
    ("dpmpp_2s", "dpmpp_2s", {}, 2 * N - 1, True),
]


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-edm"])
@pytest.mark.parametrize("ours,peer,options,nfe,mid", K_CASES, ids=[c[0] for c in K_CASES])
def test_equals_k_diffusion(setups, name, ours, peer, options, nfe, mid):
    pb, model, noise, times = setups[name]
    grid = _midpoints(pb.schedule, times) if mid else times
    a = fewstep.sample(model, noise, solver=ours, nfe=nfe, spacing=grid, **options)
    b = run_kdiffusion(peer, model, noise, kdiffusion_sigmas(pb.schedule, times))
    assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-edm"])
def test_lms_equals_k_diffusion(setups, name):
    """k-diffusion's LMS also takes a multistep step to sigma = 0; up to the last grid point
    (state and data prediction there) the two agree."""
    pb, model, noise, times = setups[name]
    seen = []
    run_kdiffusion(
        "lms",
        model,
        noise,
        kdiffusion_sigmas(pb.schedule, times),
        callback=lambda d: seen.append((d["x"].clone(), d["denoised"].clone())),
    )
    traj = fewstep.sample(model, noise, solver="lms", nfe=N, spacing=times, return_trajectory=True)
    alpha = float(pb.schedule.alpha(times[-1]))
    assert _rel(traj.states[-1], seen[-1][0] * alpha) < 1e-6
    assert _rel(traj.samples, seen[-1][1]) < 1e-6


def _overridden(cls, pb, times, final_zero=True, **config):
    """A diffusers scheduler whose grid is replaced by fewstep's, in float64."""
    s = diffusers_scheduler(cls, pb.schedule, pb.prediction, **config)
    s.set_timesteps(len(times))
    sig = pb.schedule.edm_sigma(times)
    s.sigmas = torch.cat([sig, sig.new_zeros(1) if final_zero else sig[-1:]])
    s.timesteps = times.clone()
    return s


D_CASES = [
    ("dpmpp_2m", {}, {"solver_order": 2}),
    ("dpmpp_2m", {"solver_type": "heun"}, {"solver_order": 2, "solver_type": "heun"}),
    ("dpmpp_3m", {"solver_type": "midpoint"}, {"solver_order": 3}),
    ("unipc", {"order": 2}, {"solver_order": 2}),
    ("unipc", {"order": 3}, {"solver_order": 3}),
]


@pytest.mark.parametrize("ours,options,config", D_CASES, ids=[f"{c[0]}-{c[2]}" for c in D_CASES])
def test_multistep_equals_diffusers(setups, ours, options, config):
    pb, model, noise, times = setups["gmm-vp"]
    cls = "UniPCMultistepScheduler" if ours == "unipc" else "DPMSolverMultistepScheduler"
    b, calls = run_diffusers(_overridden(cls, pb, times, **config), model, noise)
    a = fewstep.sample(model, noise, solver=ours, nfe=N, spacing=times, **options)
    assert calls == N and _rel(a, b) < 1e-6


def _singlestep_orders(order_list):
    """diffusers' per-timestep order list -> fewstep's per-step orders (its last entry is
    the step to the final sigma, fewstep's final data prediction)."""
    steps = []
    for o in order_list[:-1]:
        if o == 1:
            steps.append(1)
        else:
            steps[-1] = o
    return steps


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_singlestep_equals_diffusers(setups, algorithm, order, solver_type):
    pb, model, noise, times = setups["gmm-vp"]
    data = algorithm == "dpmsolver++"
    final = "zero" if data else "sigma_min"  # diffusers refuses zero for noise prediction
    s = _overridden(
        "DPMSolverSinglestepScheduler",
        pb,
        times,
        final_zero=data,
        solver_order=order,
        algorithm_type=algorithm,
        solver_type=solver_type,
        final_sigmas_type=final,
        lower_order_final=True,
    )
    s.order_list = s.get_order_list(N)
    b, _ = run_diffusers(s, model, noise)
    name = ("dpmpp_2s" if order == 2 else "dpmpp_3s") if data else "dpm_solver"
    extra = {} if data else {"order": order}
    traj = fewstep.sample(
        model,
        noise,
        solver=name,
        nfe=N,
        spacing=times,
        solver_type=solver_type,
        orders=_singlestep_orders(s.order_list),
        return_trajectory=True,
        **extra,
    )
    ours = traj.samples if data else traj.states[-1]  # sigma_min: diffusers ends at the state
    assert _rel(ours, b) < 1e-6


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_logrho_equals_diffusers(setups, order):
    pb, model, noise, times = setups["gmm-vp"]
    s = _overridden("DEISMultistepScheduler", pb, times, final_zero=False, solver_order=order)
    b, _ = run_diffusers(s, model, noise)
    traj = fewstep.sample(
        model,
        noise,
        solver="deis",
        variant="logrho",
        order=order,
        nfe=N,
        spacing=times,
        return_trajectory=True,
    )
    assert _rel(traj.states[-1], b) < 1e-6


def test_unipc_bh1_agrees_until_diffusers_final_nan(setups):
    pb, model, noise, times = setups["gmm-vp"]
    s = _overridden("UniPCMultistepScheduler", pb, times, solver_order=3, solver_type="bh1")
    x = noise.clone()
    for t in s.timesteps[:-1]:
        x = s.step(model.fn(x, torch.full((x.shape[0],), float(t))), t, x).prev_sample
    traj = fewstep.sample(
        model,
        noise,
        solver="unipc",
        order=3,
        variant="bh1",
        nfe=N,
        spacing=times,
        return_trajectory=True,
    )
    assert _rel(traj.states[-1], x) < 1e-6
    assert bool(torch.isfinite(traj.samples).all())


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers(setups, spacing):
    pb, model, noise, _ = setups["gmm-vp"]
    s = diffusers_scheduler(
        "DDIMScheduler",
        pb.schedule,
        "epsilon",
        set_alpha_to_one=True,
        timestep_spacing=spacing,
        steps_offset=1,
    )
    s.alphas_cumprod = pb.schedule.alphas_cumprod.clone()  # the float64 table
    s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    b, calls = run_diffusers(s, model, noise, 10)
    a = fewstep.sample(model, noise, solver="ddim", nfe=10, spacing=spacing)
    assert calls == 10 and _rel(a, b) < 1e-6


def test_classical_frame_equals_k_diffusion_on_flow():
    """ComfyUI runs flow models through k-diffusion with sigma = t: its DPM-Solver++ steps
    are then exponential in log t, which is fewstep's ``frame="classical"`` (with the
    reference rule's order everywhere: ``max_step_ratio=None``)."""
    pb = problem("gmm-flow", dim=8, components=3, seed=2)
    model, noise = pb.model(), pb.noise(4, seed=1)
    times = fewstep.spacing.FlowShift().times(pb.schedule, N)
    sigmas = kdiffusion_sigmas(pb.schedule, times)
    for ours, peer, options in (
        ("dpmpp_2m", "dpmpp_2m", {"lower_order_final": False, "max_step_ratio": None}),
        (
            "dpmpp_3m",
            "dpmpp_3m",
            {"solver_type": "heun", "lower_order_final": False, "max_step_ratio": None},
        ),
    ):
        a = fewstep.sample(
            model, noise, solver=ours, nfe=N, spacing=times, frame="classical", **options
        )
        b = run_kdiffusion(peer, model, noise, sigmas)
        assert _rel(a, b) < 1e-6
