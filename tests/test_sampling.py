"""Layer 5: the sampling loop's conventions, NFE accounting, convergence and errors."""

import pytest
import torch

import fewstep
from fewstep.errors import ArgumentError, ModelOutputError, NonFiniteError
from fewstep.reference import measure_order, problem

PROBLEMS = ["gmm-vp", "gmm-flow", "gmm-edm"]


@pytest.fixture(scope="module")
def problems():
    return {name: problem(name, dim=16, components=4, seed=1) for name in PROBLEMS}


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("solver", ["ddim", "euler"])
def test_first_order_solvers_converge_at_order_one(problems, name, solver):
    pb = problems[name]
    noise = pb.noise(64, seed=5)
    errors, order = measure_order(pb, solver, [40, 80, 160, 320], noise)
    assert errors[-1] < errors[0]
    assert 0.9 <= order <= 1.1, (errors, order)


@pytest.mark.parametrize("nfe", [1, 2, 3, 10, 37])
@pytest.mark.parametrize("solver", ["ddim", "euler"])
def test_nfe_is_exact(problems, solver, nfe):
    pb = problems["gmm-vp"]
    model = pb.model()
    traj = fewstep.sample(model, pb.noise(4), solver=solver, nfe=nfe, return_trajectory=True)
    assert model.nfe == nfe == traj.nfe
    assert len(traj.states) == len(traj.times)
    assert float(traj.times[0]) == pb.schedule.t_max
    assert float(traj.times[-1]) == (pb.schedule.t_min if nfe > 1 else pb.schedule.t_max)


def test_start_state_conventions(problems):
    for name, scale in (("gmm-vp", 1.0), ("gmm-flow", 1.0), ("gmm-edm", 80.0)):
        pb = problems[name]
        noise = pb.noise(3)
        traj = fewstep.sample(pb.model(), noise, nfe=4, return_trajectory=True)
        torch.testing.assert_close(traj.states[0], noise * scale)


def test_ddim_and_euler_agree(problems):
    for pb in problems.values():
        noise = pb.noise(8)
        a = fewstep.sample(pb.model(), noise, solver="ddim", nfe=12)
        b = fewstep.sample(pb.model(), noise, solver="euler", nfe=12)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_one_call_returns_the_data_prediction_at_the_start(problems):
    pb = problems["gmm-edm"]
    noise = pb.noise(4)
    out = fewstep.sample(pb.model(), noise, nfe=1)
    torch.testing.assert_close(out, pb.gmm.denoise(noise * 80.0, 1.0, 80.0))


def test_samples_do_not_depend_on_the_batch(problems):
    pb = problems["gmm-flow"]
    noise = pb.noise(6)
    full = fewstep.sample(pb.model(), noise, nfe=8)
    for i in range(6):
        alone = fewstep.sample(pb.model(), noise[i : i + 1], nfe=8)
        torch.testing.assert_close(alone[0], full[i], rtol=1e-12, atol=1e-12)


def test_custom_times_and_callback(problems):
    pb = problems["gmm-vp"]
    seen = []
    times = [999.0, 700.5, 300.25, 0.0]
    out = fewstep.sample(pb.model(), pb.noise(2), nfe=4, spacing=times, callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2, 3] and [s.t for s in seen] == times
    assert out.shape == (2, 16)


def test_non_finite_output_stops_with_the_step():
    sch = fewstep.EDMSchedule()
    calls = []

    def fn(x, t):
        calls.append(1)
        return x * float("nan") if len(calls) == 3 else x * 0

    with pytest.raises(NonFiniteError, match="step 2"):
        fewstep.sample(fewstep.Model(fn, sch, "sample"), torch.randn(2, 3), nfe=6)
    assert len(calls) == 3


def test_bad_arguments_name_themselves(problems):
    pb = problems["gmm-vp"]
    model, noise = pb.model(), pb.noise(2)
    cases = [
        (dict(nfe=0), "nfe"),
        (dict(nfe=2.5), "nfe"),
        (dict(solver="rk45"), "solver: unknown"),
        (dict(solver="ddim", order=2), "solver options"),
        (dict(spacing="nope"), "spacing: unknown"),
        (dict(spacing=[999.0, 10.0, 500.0], nfe=3), "strictly decreasing"),
        (dict(spacing=[999.0, 10.0], nfe=3), "need 3"),
        (dict(spacing=[1200.0, 10.0], nfe=2), "must lie in"),
        (dict(seed=3), "seed"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ArgumentError, match=match):
            fewstep.sample(model, noise, **kwargs)
    with pytest.raises(ArgumentError, match="noise"):
        fewstep.sample(model, torch.zeros(2, 16, dtype=torch.int64))
    with pytest.raises(ArgumentError, match="model"):
        fewstep.sample(lambda x, t: x, noise)
    wrong_shape = fewstep.Model(lambda x, t: x[:, :-1], pb.schedule)
    with pytest.raises(ModelOutputError, match="shaped like x"):
        fewstep.sample(wrong_shape, noise)
    with pytest.raises(ArgumentError, match="batch size"):
        fewstep.sample(model, noise, cond={"y": torch.zeros(3)})


def test_threads_share_the_plan_cache(monkeypatch):
    """Samplers called from several threads at once, with a cache small enough to evict
    all the time, give what they give alone."""
    from concurrent.futures import ThreadPoolExecutor

    import fewstep.sampling as sampling

    monkeypatch.setattr(sampling, "_PLAN_CACHE_SIZE", 2)
    pb = problem("gmm-vp", dim=4, components=2, seed=1)
    model, noise = pb.model(), pb.noise(3, seed=2)
    jobs = [(s, n) for s in ("ddim", "dpmpp_2m", "unipc") for n in range(3, 11)] * 4

    def run(job):
        return fewstep.sample(model, noise, solver=job[0], nfe=job[1])

    alone = {job: run(job) for job in set(jobs)}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, jobs))
    for job, x in zip(jobs, together, strict=True):
        assert torch.equal(x, alone[job])
