"""The solver zoo: measured convergence orders on exact mixtures, exact NFE, options, errors.

Orders are fitted (median per-sample RMSE against the exact ODE solution, log-log slope) on
grids where the theory applies: uniform in log-SNR for the exponential integrators (on flow,
started at t = 0.999 so that the log-SNR range is finite), uniform in tau for the classical
ones. Multistep solvers are measured with the singlestep warm-up and no lower-order final
step: with the usual first-order warm-up a multistep method is globally second order at
best (its first step's O(h^2) error), which a separate test shows.
"""

import math

import pytest
import torch

import fewstep
from fewstep.errors import ArgumentError
from fewstep.reference import GaussianMixture, convergence_order, problem, rmse
from fewstep.reference.problems import Problem
from fewstep.solvers import SOLVERS

NFES = [40, 80, 160, 320]
NFES_HIGH = [80, 160, 320, 640]  # third order: 40 -> 80 is still pre-asymptotic
NFES_FOURTH = [160, 320, 640]  # fourth order reaches its slope later


@pytest.fixture(scope="module")
def problems():
    out = {
        name: problem(f"gmm-{name}", dim=16, components=4, seed=1) for name in ("vp", "edm", "flow")
    }
    smooth = GaussianMixture.random(16, 4, seed=1, condition=10.0)
    out["flow-t"] = Problem("flow-t", smooth, fewstep.FlowSchedule(), "flow")
    return out


def _lambda_grid(schedule, n, t_start):
    lam = torch.linspace(
        float(schedule.lam(t_start)), float(schedule.lam(schedule.t_min)), n, dtype=torch.float64
    )
    t = schedule.t_of_lam(lam)
    t[0], t[-1] = t_start, schedule.t_min
    return t


def measured_order(pb, solver, options, nfes=NFES):
    """Median-error order of ``solver`` on problem ``pb`` (see the module docstring)."""
    noise = pb.noise(64, seed=5)
    model = pb.model()
    exponential = pb.name != "flow-t"
    t_start = 0.999 if pb.name == "gmm-flow" else pb.schedule.t_max
    ref = pb.reference(noise, t_start=t_start)
    errors = []
    for nfe in nfes:
        if exponential:
            points = fewstep.sampling.resolve(model, solver, None, **options)[0].grid_size(
                nfe, False
            )
            spacing = _lambda_grid(pb.schedule, points, t_start).tolist()
        else:
            spacing = "time_uniform"
        x = fewstep.sample(model, noise, solver=solver, nfe=nfe, spacing=spacing, **options)
        errors.append(float(rmse(x, ref).median()))
    return convergence_order(nfes, errors), errors


EXACT = {"warmup": "singlestep", "lower_order_final": False}
EXPONENTIAL_PROBLEMS = ("vp", "edm", "flow")
CASES = [
    ("ddim", {}, 1, EXPONENTIAL_PROBLEMS),
    ("dpmpp_2m", {}, 2, EXPONENTIAL_PROBLEMS),
    ("dpmpp_2m", {"solver_type": "heun"}, 2, EXPONENTIAL_PROBLEMS),
    ("dpmpp_3m", EXACT, 3, EXPONENTIAL_PROBLEMS),
    ("dpm_solver", {"order": 1}, 1, ("vp", "flow")),
    ("dpm_solver", {"order": 2}, 2, EXPONENTIAL_PROBLEMS),
    ("dpm_solver", {"order": 3}, 3, ("vp", "edm")),
    ("dpmpp_2s", {}, 2, EXPONENTIAL_PROBLEMS),
    ("dpmpp_3s", {}, 3, ("vp", "edm")),
    ("deis", {"order": 2, **EXACT}, 2, EXPONENTIAL_PROBLEMS),
    ("deis", EXACT, 3, ("edm", "flow")),  # t-AB in native time: the discrete VP kinks blur it
    ("deis", {"variant": "logrho", **EXACT}, 3, EXPONENTIAL_PROBLEMS),
    ("unipc", {"order": 1, **EXACT}, 2, EXPONENTIAL_PROBLEMS),  # UniC adds one order
    ("unipc", {"order": 2, **EXACT}, 3, EXPONENTIAL_PROBLEMS),
    ("unipc", {"order": 3, "variant": "bh1", **EXACT}, 4, ("edm",)),
    ("dpmpp_2m", {"corrector": "unic", **EXACT}, 3, EXPONENTIAL_PROBLEMS),
    ("euler", {}, 1, ("flow-t",)),
    ("heun", {}, 2, ("flow-t",)),
    ("dpm2", {}, 2, ("flow-t",)),
    ("lms", {"order": 3, "warmup": "singlestep"}, 3, ("flow-t",)),
    ("lms", {"warmup": "singlestep"}, 4, ("flow-t",)),
    ("ipndm", {"warmup": "singlestep"}, 4, ("flow-t",)),  # equal-step weights: needs tau-uniform
    ("pndm", {}, 2, ("flow-t",)),  # equal-step weights in sigma/alpha, which no grid here is
]


@pytest.mark.parametrize(
    "solver,options,expected,names", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]
)
def test_convergence_order(problems, solver, options, expected, names):
    nfes = NFES_FOURTH if expected >= 4 else NFES_HIGH if expected == 3 else NFES
    nfes = [n + 1 for n in nfes] if solver == "heun" else nfes
    for name in names:
        order, errors = measured_order(problems[name], solver, options, nfes)
        assert abs(order - expected) <= 0.25, (name, order, errors)


def test_lower_order_warmup_caps_multistep_order_at_two(problems):
    """The peers' warm-up: a third-order multistep method's first step is first order, so
    as steps shrink its error falls at second order; the singlestep warm-up keeps third."""
    pb = problems["vp"]
    nfes = [320, 640, 1280]
    low, _ = measured_order(
        pb, "dpmpp_3m", {"lower_order_final": False, "warmup": "lower_order"}, nfes
    )
    full, _ = measured_order(pb, "dpmpp_3m", EXACT, nfes)
    assert low < 2.6 and full > 2.8


def test_peer_third_order_update_is_second_order(problems):
    """The reference code's DPM-Solver(++) 3M halves its second-derivative term."""
    options = {"solver_type": "midpoint", "warmup": "singlestep", "lower_order_final": False}
    order, _ = measured_order(problems["vp"], "dpmpp_3m", options)
    assert 1.75 <= order <= 2.4


# every fixed-step solver; restart (which needs a budget for its restarts) is tested in
# test_stochastic.py
FIXED = [
    name
    for name, spec in SOLVERS.items()
    if not getattr(spec[0], "adaptive", False) and name != "restart"
]


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("name", ["vp", "flow", "edm"])
def test_every_solver_honours_nfe_exactly(problems, solver, name):
    pb = problems[name]
    model = pb.model()
    noise = pb.noise(3)
    for nfe in (1, 2, 3, 4, 5, 6, 7, 10):
        before = model.nfe
        traj = fewstep.sample(model, noise, solver=solver, nfe=nfe, return_trajectory=True)
        assert model.nfe - before == nfe == traj.nfe
        assert bool(torch.isfinite(traj.samples).all())
        assert bool(torch.all(traj.times[1:] < traj.times[:-1]))


@pytest.mark.parametrize("name", ["vp", "flow", "edm"])
def test_auto_is_a_good_default(problems, name):
    pb = problems[name]
    noise = pb.noise(32, seed=2)
    ref = pb.reference(noise)
    auto = float(rmse(fewstep.sample(pb.model(), noise, nfe=10), ref).mean())
    ddim = float(rmse(fewstep.sample(pb.model(), noise, solver="ddim", nfe=10), ref).mean())
    assert auto < ddim


def test_adaptive_solver_trades_calls_for_tolerance(problems):
    for name in ("vp", "flow"):
        pb = problems[name]
        noise = pb.noise(16, seed=3)
        ref = pb.reference(noise)
        runs = []
        for rtol in (1e-2, 1e-3, 1e-4):
            model = pb.model()
            traj = fewstep.sample(
                model,
                noise,
                solver="dpm_adaptive",
                rtol=rtol,
                atol=rtol / 10,
                return_trajectory=True,
            )
            assert traj.nfe == model.nfe
            runs.append((traj.nfe, float(rmse(traj.samples, ref).mean())))
        (n1, e1), (n2, e2), (n3, e3) = runs
        assert n1 < n2 < n3 and e3 < e2 < e1, runs
        assert e3 < 1e-3


def test_adaptive_order_two(problems):
    pb = problems["edm"]
    noise = pb.noise(8)
    model = pb.model()
    x = fewstep.sample(model, noise, solver="dpm_adaptive", order=2, rtol=1e-3, atol=1e-4)
    assert float(rmse(x, pb.reference(noise)).mean()) < 1e-2 and model.nfe > 5


def test_solver_options_are_checked(problems):
    model, noise = problems["vp"].model(), problems["vp"].noise(2)
    bad = [
        (dict(solver="dpmpp_2m", order=3), "fixes"),
        (dict(solver="unipc", variant="bh3"), "variant"),
        (dict(solver="dpm_solver", order=4), "order"),
        (dict(solver="deis", warmup="rk4"), "warmup"),
        (dict(solver="dpm_solver", orders=[2, 2], nfe=10), "orders"),
        (dict(solver="dpm_adaptive", nfe=10), "nfe"),
        (dict(solver="lms", corrector="unip"), "corrector"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ArgumentError, match=match):
            fewstep.sample(model, noise, **kwargs)


def test_explicit_singlestep_orders(problems):
    pb = problems["edm"]
    model, noise = pb.model(), pb.noise(2)
    fewstep.sample(model, noise, solver="dpmpp_3s", nfe=7, orders=[1, 2, 3])
    assert model.nfe == 7


def test_zero_snr_start_uses_first_order_step(problems):
    """On rectified flow the state at t = 1 is pure noise (log-SNR -inf); every solver's
    first step from there is the exact-in-the-limit DDIM step, and the result is finite."""
    pb = problems["flow"]
    noise = pb.noise(4)
    for solver in ("dpmpp_3m", "unipc", "deis", "dpm_solver", "dpmpp_3s", "pndm"):
        x = fewstep.sample(pb.model(), noise, solver=solver, nfe=8)
        assert bool(torch.isfinite(x).all())
    assert math.isinf(float(pb.schedule.lam(1.0)))


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_3m_sde"])
def test_a_step_much_longer_than_its_history_drops_order(solver):
    """``max_step_ratio``: the last step of a flow-time grid is 10x longer in log-SNR than
    the ones before it; it extrapolates from one evaluation instead of three, and sampling
    the flow mixture at few steps gets far more accurate for it."""
    from fewstep.program import Combine

    pb = problem("gmm-flow", dim=16, components=8, seed=0)
    model, noise = pb.model(), pb.noise(64, seed=3)
    extra = {"seed": 0} if solver.endswith("sde") else {}

    def last_step_sources(**options):
        _, _, program = fewstep.sampling.plan(model, solver, 8, **options)
        combine = [i for i in program.instructions if isinstance(i, Combine)][-1]
        return len([t for t in combine.terms if t.data != 0 or t.noise != 0])

    assert last_step_sources() == 1
    assert last_step_sources(max_step_ratio=None) > 1
    if not extra:
        ref = pb.reference(noise)
        guarded = rmse(fewstep.sample(model, noise, solver=solver, nfe=8), ref).mean()
        raw = rmse(
            fewstep.sample(model, noise, solver=solver, nfe=8, max_step_ratio=None), ref
        ).mean()
        assert guarded < 0.8 * raw, (float(guarded), float(raw))
    with pytest.raises(ArgumentError, match="max_step_ratio"):
        fewstep.sampling.plan(model, solver, 8, max_step_ratio=0.5)
