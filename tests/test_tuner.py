"""The tuner: it improves the calibration loss, its configurations round-trip and keep the
sampler's invariants, and every consumer (sample, diffusers) runs them alike."""

import gc
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from tqdm.auto import tqdm

import fewstep
from fewstep.analytic import GaussianData, analytic_start
from fewstep.guidance import class_inputs
from fewstep.model import Point
from fewstep.program import Combine, Estimate
from fewstep.reference import GaussianMixture, problem, rmse
from fewstep.reference.metrics import per_sample_rmse
from fewstep.sampling import plan
from fewstep.solvers import get_solver
from fewstep.spacing import Times, Warped
from fewstep.tuner import SamplerConfig, Teacher, calibration_loss, gradient, refit_first_step
from fewstep.tuner.config import Correction, corrected
from fewstep.tuner.finish import fit_finish, run_features
from fewstep.tuner.gradient import Descent, held_out_split
from fewstep.tuner.grid import step_costs
from fewstep.tuner.teacher import TeacherCache
from fewstep.tuner.tune import TEACHERS, _fit_gaussian, teacher_for


@pytest.fixture(scope="module")
def setup():
    pb = problem("gmm-vp", dim=8, components=3, seed=6)
    model = pb.model()
    calibration = pb.noise(32, seed=1)
    target = pb.reference(calibration)
    config = fewstep.tune(
        model, 4, calibration=calibration, target=target, iterations=40, progress=False
    )
    return pb, model, calibration, target, config


def refine(*args, **options):
    """A descent run whole: (times, corrections, call times, held-out before and after)."""
    descent = Descent(*args, **options)
    descent.advance(descent.iterations)
    return descent.result()


def test_tuning_improves_the_calibration_loss(setup):
    _, _, _, _, config = setup
    assert config.meta["calibration_rmse"] < 0.8 * config.meta["calibration_rmse_start"]
    assert config.meta["tuning_calls"] > 0 and config.meta["seconds"] > 0


def test_tuned_sampler_keeps_the_invariants(setup):
    pb, _, _, _, config = setup
    sch = pb.schedule
    times = torch.tensor(config.times)
    assert bool(torch.all(times[1:] < times[:-1]))
    assert float(times[0]) == sch.t_max and float(times.min()) >= sch.t_min
    model = pb.model()
    out = fewstep.sample(model, pb.noise(5, seed=9), config=config)
    assert model.nfe == config.nfe == 4 and bool(torch.isfinite(out).all())
    if config.call_times is not None:
        assert len(config.call_times) == 4
        assert all(sch.t_min <= t <= sch.t_max for t in config.call_times)


def test_config_round_trips_through_json(setup, tmp_path):
    pb, model, _, _, config = setup
    assert config.program(model).finish is not None  # the round trip covers a finish
    path = tmp_path / "tuned.json"
    config.save(path)
    again = SamplerConfig.load(path)
    noise = pb.noise(6, seed=3)
    a = fewstep.sample(model, noise, config=config)
    b = fewstep.sample(model, noise, config=again)
    c = fewstep.sample(model, noise, config=str(path))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_one_correction_more_than_combinations_corrects_the_result(setup):
    """The extra correction forms the result from the output evaluation's data prediction,
    the state it was made at and earlier evaluations' data (kept alive to the end);
    configurations without it run the plain result."""
    pb, model, _, _, _ = setup
    _, _, program = plan(model, "unipc", 4)
    n = sum(isinstance(ins, Combine) for ins in program.instructions)
    seen = []

    def evaluate(state, ins):
        seen.append((state.clone(), model.evaluate(state, ins.point)))
        return seen[-1][1]

    x = pb.noise(3, seed=2).double()
    plain = program.run(evaluate, x)
    states, predictions = zip(*seen, strict=True)
    zero = [Correction()] * n
    finished = corrected(program, [*zero, Correction(0.5, {0: 0.25, 3: -0.1})])
    out = finished.run(lambda state, ins: model.evaluate(state, ins.point), x)
    expected = plain + 0.5 * states[-1] + 0.25 * predictions[0].data - 0.1 * predictions[3].data
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(
        corrected(program, zero).run(lambda s, i: model.evaluate(s, i.point), x), plain
    )
    with pytest.raises(fewstep.ArgumentError, match=f"{n + 2} corrections"):
        corrected(program, [*zero, Correction(), Correction()])


def test_the_finish_recovers_a_result_the_run_can_form_and_is_dropped_where_useless(setup):
    """A target that is an affine combination of the run's last state and data predictions
    is fitted to the coefficients that form it; a target the program already returns gets
    no finish."""
    _, model, calibration, _, _ = setup
    _, _, program = plan(model, "unipc", 4)
    teacher = teacher_for(model, calibration)
    state, data = run_features(model, program, teacher)
    target = data[-1] + 0.3 * state - 0.2 * data[0] + 0.1 * data[2]
    finish, before, after = fit_finish(model, program, replace(teacher, target=target))
    assert after < 1e-6 * before
    assert finish.scale == pytest.approx(0.3, abs=1e-5)
    expected = {0: -0.2, 1: 0.0, 2: 0.1, 3: 0.0}
    assert finish.data == pytest.approx(expected, abs=1e-5)
    none, before, after = fit_finish(model, program, replace(teacher, target=data[-1]))
    assert none is None and after == before


def test_tuned_beats_the_plain_solver_on_held_out_noise(setup):
    pb, model, _, _, config = setup
    held = pb.noise(64, seed=77)
    ref = pb.reference(held)
    tuned = float(rmse(fewstep.sample(model, held, config=config), ref).mean())
    plain = float(rmse(fewstep.sample(model, held, nfe=4), ref).mean())
    assert tuned < plain


def test_refinement_keeps_its_end_unless_an_earlier_snapshot_is_clearly_better(setup, monkeypatch):
    """The descent's end is kept unless an earlier snapshot (the start included) has a lower
    held-out mean by ``SIGNIFICANCE`` standard errors; the value reported is the kept one's
    mean error on the held-out quarter, every fourth noise (the metric reported)."""
    _, model, calibration, target, config = setup
    teacher = replace(teacher_for(model, calibration), target=target)
    solver = get_solver(config.solver, **config.options)
    gaussian = config.gaussian and GaussianData.from_record(config.gaussian)
    held = slice(3, 32, 4)  # every fourth of the 32 calibration noises

    def descend(significance, **rates):
        monkeypatch.setattr(gradient, "SIGNIFICANCE", significance)
        times, corrections, calls, before, after = refine(
            model, solver, 4, config.times, teacher, iterations=10, gaussian=gaussian, **rates
        )
        kept = replace(config, times=times, corrections=corrections, call_times=calls)
        out = fewstep.sample(model, calibration[held], config=kept)
        assert float(rmse(out, target[held]).mean()) == pytest.approx(after, rel=1e-9)
        return times, before, after

    end = descend(float("inf"))  # nothing beats the end
    best = descend(0.0)  # any lower mean does: the best held-out snapshot
    assert best[2] <= min(end[1], end[2])
    assert descend(gradient.SIGNIFICANCE)[0] in (end[0], best[0])
    # learning rates 300 times the default leave the sampler's domain (a non-finite model
    # output) at once: the descent stops there and keeps the start instead of raising
    wild = descend(gradient.SIGNIFICANCE, lr_times=10.0, lr_coefficients=0.6)
    assert wild[0] == pytest.approx(config.times, rel=1e-12) and wild[2] == wild[1] == end[1]


def test_clearly_better_needs_the_paired_difference_beyond_its_standard_error():
    than = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert gradient.clearly_better(than - 0.1, than)
    assert not gradient.clearly_better(than, than)
    noisy = than + torch.tensor([-0.5, 0.6, -0.7, 0.5])  # lower mean, within the noise
    assert noisy.mean() < than.mean() and not gradient.clearly_better(noisy, than)
    failed = torch.full((4,), float("inf"))
    assert gradient.clearly_better(than, failed) and not gradient.clearly_better(failed, than)


def test_a_large_calibration_is_fitted_in_minibatches(setup, monkeypatch):
    """Above FIT_BATCH fitting noises each gradient step draws that many (so a step costs the
    same however many noises calibrate), drawn afresh each step so the descent sees every
    one, the held-out check sees its whole quarter, and the draws are the same on every run."""
    _, model, calibration, target, config = setup
    teacher = replace(teacher_for(model, calibration), target=target)
    solver = get_solver(config.solver, **config.options)
    gaussian = config.gaussian and GaussianData.from_record(config.gaussian)
    monkeypatch.setattr(gradient, "FIT_BATCH", 6)
    seen, batches = set(), []
    rows = {tuple(t.tolist()): i for i, t in enumerate(target)}

    def spy(x, reference, eps=0.0):
        if torch.is_grad_enabled():
            batches.append(len(reference))
            seen.update(rows[tuple(t.tolist())] for t in reference)
        else:
            assert len(reference) == 8  # the held-out quarter, whole
        return per_sample_rmse(x, reference, eps)

    monkeypatch.setattr(gradient, "per_sample_rmse", spy)
    first = refine(model, solver, 4, config.times, teacher, iterations=30, gaussian=gaussian)
    assert set(batches) == {6} and len(batches) == 30
    assert seen == set(held_out_split(32)[0].tolist())
    again = refine(model, solver, 4, config.times, teacher, iterations=30, gaussian=gaussian)
    assert again[:3] == first[:3]


def test_the_held_out_quarter_has_every_class_however_calibration_is_ordered():
    """Every fourth noise is held out, class by class when there are labels: calibration
    sorted by class and calibration with the classes in turn (i % 10, whose every fourth
    is only odd classes) both put every class on both sides."""
    fit, held = held_out_split(40)
    assert held.tolist() == list(range(3, 40, 4)) and len(fit) == 30
    for labels in (torch.arange(10).repeat_interleave(4), torch.arange(40) % 10):
        fit, held = held_out_split(len(labels), labels)
        assert len(held) == 10 and sorted(fit.tolist() + held.tolist()) == list(range(40))
        assert set(labels[fit].tolist()) == set(labels[held].tolist()) == set(range(10))
    assert set((torch.arange(40) % 10)[held_out_split(40)[1]].tolist()) == {1, 3, 5, 7, 9}
    fit, held = held_out_split(5)  # too few to hold any out: all of it for both
    assert fit.tolist() == held.tolist() == list(range(5))


def test_methods_and_the_teacher_cache(setup):
    _pb, model, calibration, target, _ = setup
    grid_only = fewstep.tune(
        model,
        4,
        calibration=calibration,
        target=target,
        method="grid",
        iterations=10,
        progress=False,
    )
    assert grid_only.corrections == [] and grid_only.call_times is None
    assert grid_only.meta["teacher_calls"] == 0  # reused from the first tuning
    fresh = Teacher.solve(model, calibration, points=20, refine=1, target=target)
    loss = calibration_loss(model, fresh, grid_only.solver, grid_only.options, 4, grid_only.times)
    assert abs(loss - grid_only.meta["calibration_rmse"]) < 1e-9  # the reported loss is real
    assert (
        grid_only.meta["calibration_rmse"] <= grid_only.meta["calibration_rmse_start"]
    )  # never worse
    assert len(TEACHERS) >= 1


def test_teacher_cache_tells_guidance_scales_and_conditions_apart():
    """One network under two guidance scales, or with labels that differ only mid-batch,
    gets its own teacher; the same inputs again reuse it."""
    pb = problem("gmm-vp", dim=4, components=2, seed=3)
    net = pb.model().fn

    def fn(x, t, y):
        return net(x, t) + 0.1 * y.to(x).view(-1, 1)

    noise = pb.noise(1200, seed=5)
    labels = torch.zeros(1200, dtype=torch.long)
    other = labels.clone()
    other[600] = 1  # the same printed summary (first and last entries)
    assert repr({"y": labels}) == repr({"y": other})
    null = {"y": torch.full((1200,), 2)}
    teachers = []
    for scale, y in ((1.0, labels), (3.0, labels), (3.0, other), (3.0, labels)):
        model = fewstep.Model(fn, pb.schedule, "epsilon", guidance_scale=scale)
        teachers.append(teacher_for(model, noise, {"y": y}, null))
    assert teachers[3] is teachers[1]  # reused for equal inputs
    assert len({id(t) for t in teachers[:3]}) == 3
    assert not torch.equal(teachers[0].target, teachers[1].target)
    assert not torch.equal(teachers[1].target[600], teachers[2].target[600])


def test_teacher_cache_is_bounded_and_lets_networks_go():
    """Past the memory bound the least recently used teacher goes first (the newest always
    stays); a collected network's teachers go; a network without weak references is held."""
    pb = problem("gmm-vp", dim=4, components=2, seed=3)
    inner = pb.model().fn
    cache, solves = TeacherCache(), []

    def teacher(model, noise):
        def solve():
            solves.append(noise)
            return Teacher.solve(model, noise, points=10, refine=1)

        return cache.get(cache.key(model, noise), solve)

    model = pb.model()
    noises = [pb.noise(8, seed=s) for s in range(3)]
    first = teacher(model, noises[0])
    cache.max_bytes = 2 * (first.states.nbytes + first.target.nbytes + first.noise.nbytes)
    teacher(model, noises[1])
    assert teacher(model, noises[0]) is first  # a hit, now the most recent
    teacher(model, noises[2])  # over the bound: noises[1] goes
    assert len(cache) == 2 and len(solves) == 3
    assert teacher(model, noises[0]) is first and len(solves) == 3
    teacher(model, noises[1])
    assert len(solves) == 4 and len(cache) == 2
    cache.max_bytes = 0
    teacher(model, noises[2])
    assert len(cache) == 1  # the newest stays

    class Net:
        def __call__(self, x, t):
            return inner(x, t)

    class Slotted:
        __slots__ = ()  # no weak references

        def __call__(self, x, t):
            return inner(x, t)

    cache.max_bytes = 1 << 30
    held, collected = Slotted(), Net()
    teacher(fewstep.Model(held, pb.schedule, "epsilon"), noises[0])
    teacher(fewstep.Model(collected, pb.schedule, "epsilon"), noises[0])
    assert len(cache) == 3
    del held, collected
    gc.collect()
    assert len(cache) == 2  # the collected network's teacher went with it; the slotted one
    # is held, so its id cannot be reused by another network
    cache.clear()
    assert len(cache) == 0


def test_the_teacher_keeps_every_refined_state_of_its_solve_and_no_other():
    """The teacher writes every refine-th state of its solve in place as the solve lands on
    it (in chunks of batch_size too): the states of the full trajectory, subsampled."""
    pb = problem("gmm-vp", dim=8, components=3, seed=6)
    model, noise = pb.model(), pb.noise(7, seed=4)
    solve = dict(solver="unipc", nfe=13, order=3, warmup="singlestep", lower_order_final=False)
    full = fewstep.sample(model, noise, spacing=Warped(), return_trajectory=True, **solve)
    states = torch.stack(full.states[::3])
    for batch_size in (None, 3):
        teacher = Teacher.solve(model, noise, points=5, refine=3, batch_size=batch_size)
        assert len(full.states) == 11 and teacher.states.shape[0] == 4  # warm-up: 2 calls more
        assert torch.equal(teacher.times, full.times[::3])
        if batch_size is None:
            assert torch.equal(teacher.states, states)
            assert torch.equal(teacher.target, full.samples)
        else:  # other batches: the mixture's matmuls round otherwise
            torch.testing.assert_close(teacher.states, states, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(teacher.target, full.samples, rtol=1e-12, atol=1e-12)

    # the states it does not keep are never held: live noise-shaped tensors stay bounded
    # however long the solve (they were one per step: 50 at the 45th call)
    def held():
        return sum(type(o) is torch.Tensor and o.shape == noise.shape for o in gc.get_objects())

    live, inner, before = [], model.fn, held()

    def counting(x, t):
        if model.nfe % 9 == 8:  # calls 9, 18, ..., 45 of 46
            live.append(held() - before)
        return inner(x, t)

    model.fn, model.nfe = counting, 0
    Teacher.solve(model, noise, points=16, refine=3)
    assert len(live) == 5 and max(live) < 20


def test_step_costs_are_ddim_step_errors_cached_per_target():
    pb = problem("gmm-vp", dim=8, components=3, seed=6)
    model = pb.model()
    teacher = Teacher.solve(model, pb.noise(16, seed=4), points=13, refine=1)
    cost, end = step_costs(model, teacher)
    # the cost of a step is the error of the DDIM sampler's step between those teacher points
    # (steps to later points formed a block of POINTS_AT_ONCE at a time: 8 and 3 from a = 0)
    for a, b in [(2, 5), (0, 10)]:
        step = fewstep.sample(
            model,
            teacher.states[a],
            solver="ddim",
            nfe=2,
            spacing=teacher.times[[a, b]],
            return_trajectory=True,
        ).states[1]
        alpha, sigma = model.schedule.alpha_sigma(teacher.times[b])
        frame = alpha - model.schedule.classical_k * sigma
        expected = ((step - teacher.states[b]) / frame).pow(2).mean()
        assert float(cost[a, b]) == pytest.approx(float(expected), rel=1e-5)
    assert bool(torch.isinf(cost[b, a])) and float(end[-1]) < float(end[0])
    calls = model.nfe
    assert step_costs(model, teacher)[0] is cost and model.nfe == calls  # cached
    other = replace(teacher, target=teacher.target + 1.0)  # another target: only the end moves
    cost_other, end_other = step_costs(model, other)
    assert torch.equal(cost_other, cost) and not torch.equal(end_other, end)


def test_config_refuses_other_models_and_options(setup):
    pb, model, _, _, config = setup
    flow = problem("gmm-flow", dim=8, components=3, seed=6).model()
    with pytest.raises(fewstep.ArgumentError, match="schedule"):
        fewstep.sample(flow, pb.noise(2), config=config)
    with pytest.raises(fewstep.ArgumentError, match="config"):
        fewstep.sample(model, pb.noise(2), config=config, solver="ddim")
    with pytest.raises(fewstep.ArgumentError, match="nfe"):
        fewstep.tune(model, 1, calibration=pb.noise(4))
    with pytest.raises(fewstep.ArgumentError, match="method"):
        fewstep.tune(model, 4, calibration=pb.noise(4), method="magic")
    with pytest.raises(fewstep.ArgumentError, match="calibration"):
        fewstep.tune(model, 4, calibration=pb.noise(4)[0])
    with torch.inference_mode(), pytest.raises(fewstep.ArgumentError, match="inference_mode"):
        fewstep.tune(model, 4, calibration=pb.noise(4))


def test_analytic_first_step_is_the_exact_gaussian_posterior():
    """On data that is one diagonal Gaussian the analytic prediction is exact: it matches the
    exact mixture's posterior mean at any noise level."""
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.2, 1.5, 0.7], dtype=torch.float64)
    gmm = GaussianMixture(mean[None], torch.diag(var)[None])
    x = torch.randn(5, 3, dtype=torch.float64)
    for alpha, sigma in [(0.07, 0.998), (0.6, 0.8), (1.0, 3.0)]:
        pred = GaussianData(mean, var).predict(x, Point(0.0, alpha, sigma, 0.0, 0.0, 0.0))
        torch.testing.assert_close(pred.data, gmm.denoise(x, alpha, sigma))
        torch.testing.assert_close(alpha * pred.data + sigma * pred.noise, x)
    fitted = GaussianData.fit(gmm.sample(20000, seed=1))
    torch.testing.assert_close(fitted.mean, mean, atol=0.05, rtol=0)
    torch.testing.assert_close(fitted.var, var, atol=0.05, rtol=0.05)
    with pytest.raises(fewstep.ArgumentError, match="shape"):
        fitted.predict(torch.zeros(2, 4, dtype=torch.float64), Point(0.0, 0.1, 1.0, 0, 0, 0))


def test_class_conditional_gaussian_picks_each_samples_class():
    """Fitted with labels, the Gaussian's mean is the class's (the variance about the class
    means); a label it never saw falls back to the overall mean, with a warning that names
    it; it needs the labels."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    labels = torch.arange(4000) % 2
    x = centres[labels] + 0.5 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    fitted = GaussianData.fit(x, labels, "y")
    torch.testing.assert_close(fitted.class_means[1], centres[1], atol=0.05, rtol=0)
    torch.testing.assert_close(
        fitted.var, torch.full((2,), 0.25, dtype=torch.float64), atol=0.02, rtol=0
    )
    point = Point(0.0, 0.6, 0.8, 0.0, 0.0, 0.0)
    state = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"no mean for class\(es\) \[7\] under 'y'"):
        pred = fitted.predict(state, point, {"y": torch.tensor([0, 1, 7])})
    # at x = 0 the posterior mean is the class mean shrunk by sigma^2 / (alpha^2 v + sigma^2)
    means = torch.stack([fitted.class_means[0], fitted.class_means[1], fitted.mean])
    expected = means * 0.64 / (0.36 * fitted.var + 0.64)
    torch.testing.assert_close(pred.data, expected)
    again = GaussianData.from_record(fitted.record())
    with pytest.warns(UserWarning, match="no mean"):
        torch.testing.assert_close(
            again.predict(state, point, {"y": torch.tensor([0, 1, 7])}).data, expected
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class has a mean: no warning
        fitted.predict(state, point, {"y": torch.tensor([1, 0, 1])})
    with pytest.raises(fewstep.ArgumentError, match="cond"):
        fitted.predict(state, point)
    with pytest.raises(fewstep.ArgumentError, match="labels"):
        GaussianData.fit(x, labels.double(), "y")


def test_analytic_config_makes_nfe_calls_and_round_trips(setup, tmp_path):
    """A configuration with the analytic first step runs the solver's n + 1 evaluations with
    n model calls, the first evaluation from the Gaussian, and survives its JSON file."""
    pb, model, _, target, _ = setup
    gaussian = GaussianData.fit(target)
    times = Times(tuple(torch.linspace(999.0, 20.0, 5).tolist()))
    _, _, program = plan(model, "unipc", 5, times)
    program = analytic_start(program, gaussian)
    assert program.nfe == 4 and isinstance(program.instructions[0], Estimate)
    config = SamplerConfig(
        "unipc",
        {},
        list(times.values),
        4,
        pb.schedule.config(),
        "epsilon",
        gaussian=gaussian.record(),
    )
    assert config.evaluations == 5
    noise = pb.noise(6, seed=3)
    model.nfe = 0
    out = fewstep.sample(model, noise, config=config)
    assert model.nfe == 4
    path = tmp_path / "analytic.json"
    config.save(path)
    assert torch.equal(out, fewstep.sample(model, noise, config=SamplerConfig.load(path)))
    # the same solver with the Gaussian as a model: equal up to where the first call is made
    made = []

    def fn(x, t):
        made.append(float(t[0]))
        if len(made) == 1:
            return gaussian.predict(x, Point.at(pb.schedule, made[0])).noise
        return model.fn(x, t)

    replay = fewstep.Model(fn, pb.schedule, "epsilon")
    expected = fewstep.sample(replay, noise, solver="unipc", spacing=times, nfe=5)
    torch.testing.assert_close(out, expected)


def test_refinement_with_the_analytic_first_step(setup):
    _, model, calibration, target, _ = setup
    teacher = replace(teacher_for(model, calibration), target=target)
    times = torch.linspace(999.0, 20.0, 5).tolist()
    solver = get_solver("unipc", order=2)
    new_times, _, calls, before, after = refine(
        model, solver, 4, times, teacher, iterations=10, gaussian=GaussianData.fit(target)
    )
    assert after <= before and len(new_times) == 5 and len(calls) == 4
    assert calls[0] < new_times[0]  # every call can shift: none is made at t_max


def test_diffusers_scheduler_runs_a_tuned_config(setup, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from fewstep.integrations.diffusers import FewstepScheduler

    pb, model, calibration, target, _ = setup
    config = fewstep.tune(
        model,
        4,
        calibration=calibration,
        target=target,
        iterations=10,
        analytic=False,
        progress=False,
    )
    path = tmp_path / "tuned.json"
    config.save(path)
    base = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    sched = FewstepScheduler.from_config(base.config, tuned=str(path))
    sched.set_timesteps(config.nfe)
    noise = pb.noise(3, seed=4)
    x = noise.clone()
    for t in sched.timesteps:
        out = model.fn(x, torch.full((3,), float(t), dtype=torch.float64))
        x = sched.step(out, t, x).prev_sample
    torch.testing.assert_close(x, fewstep.sample(model, noise, config=config), rtol=1e-6, atol=1e-8)
    with pytest.raises(fewstep.ArgumentError, match="num_inference_steps"):
        sched.set_timesteps(config.nfe + 3)
    config.gaussian = GaussianData.fit(target).record()
    config.times = torch.linspace(999.0, 20.0, 6).tolist()
    config.save(path)
    with pytest.raises(fewstep.ArgumentError, match="analytic"):
        FewstepScheduler.from_config(base.config, tuned=str(path))


def test_guided_conditional_model_tunes():
    """Gradient tuning through a guided, class-conditional network (a shipped digits model)."""
    from fewstep.models import load

    model = load("digits-unet", guidance_scale=2.0)
    noise = fewstep.randn((8, *model.image_shape), seed=5)
    cond, uncond = class_inputs(model, torch.arange(8) % 4)
    teacher = Teacher.solve(model, noise, points=12, refine=1, cond=cond, uncond=uncond)
    config = fewstep.tune(
        model, 3, calibration=noise, teacher=teacher, iterations=4, progress=False
    )
    assert config.meta["calibration_rmse"] <= config.meta["calibration_rmse_start"]
    out = fewstep.sample(model, noise, config=config, cond=cond, uncond=uncond)
    assert out.shape == noise.shape and bool(torch.isfinite(out).all())
    # the analytic first step is fitted per class, and a sample's result is its own
    gaussian = _fit_gaussian(teacher)
    assert gaussian.label_key == "y" and sorted(gaussian.class_means) == [0, 1, 2, 3]
    config = replace(
        config,
        gaussian=gaussian.record(),
        times=torch.linspace(999.0, 20.0, 4).tolist(),
        options={},
        corrections=[],
        call_times=None,
    )
    whole = fewstep.sample(model, noise, config=config, cond=cond, uncond=uncond)
    part_cond, part_uncond = class_inputs(model, cond["y"][5:])
    part = fewstep.sample(model, noise[5:], config=config, cond=part_cond, uncond=part_uncond)
    torch.testing.assert_close(part, whole[5:], rtol=1e-4, atol=1e-5)  # float32 network


def test_refit_first_step_gives_every_sampled_class_its_mean():
    """A configuration calibrated on some classes gets every class's mean from a teacher
    solve on noises labelled with all of them; the rest of it stays."""
    from fewstep.models import load

    model = load("digits-unet")
    noise = fewstep.randn((8, *model.image_shape), seed=5)
    seen = Teacher.solve(model, noise, points=12, refine=1, cond={"y": torch.arange(8) % 2})
    config = SamplerConfig(
        "unipc",
        {},
        torch.linspace(999.0, 20.0, 4).tolist(),
        3,
        model.schedule.config(),
        model.prediction,
        gaussian=_fit_gaussian(seen).record(),
    )
    every = {"y": torch.arange(8) % 4}
    with pytest.warns(UserWarning, match=r"\[2, 3\] under 'y'.*refit_first_step"):
        fewstep.sample(model, noise, config=config, cond=every)
    refit = refit_first_step(model, config, noise, cond=every)
    assert sorted(GaussianData.from_record(refit.gaussian).class_means) == [0, 1, 2, 3]
    assert refit.times == config.times and refit.meta["first_step_refit_samples"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fewstep.sample(model, noise, config=refit, cond=every)
    with pytest.raises(fewstep.ArgumentError, match="no analytic first step"):
        refit_first_step(model, replace(config, gaussian=None), noise, cond=every)
    with pytest.raises(fewstep.ArgumentError, match="calibration"):
        refit_first_step(model, config, noise.tolist(), cond=every)


def test_each_competitive_first_step_is_refined(setup, monkeypatch):
    """Stages 2 and 3 run for the first steps whose stage-1 best is within the margin of the
    leader: all of them with an infinite margin, the leader's alone with none."""
    _, model, calibration, target, _ = setup
    tune_module = sys.modules["fewstep.tuner.tune"]
    refined = []
    real = tune_module._descent

    def spy(model, teacher, start, *args):
        refined.append(start.gaussian is not None)
        return real(model, teacher, start, *args)

    monkeypatch.setattr(tune_module, "_descent", spy)
    for margin, expected in [(float("inf"), {False, True}), (1.0, None)]:
        monkeypatch.setattr(tune_module, "FAMILY_MARGIN", margin)
        refined.clear()
        config = fewstep.tune(
            model, 4, calibration=calibration, target=target, iterations=2, progress=False
        )
        assert set(refined) == (expected or {config.gaussian is not None} | set(refined))
        if expected is None:
            assert len(set(refined)) == 1


def test_the_second_descent_starts_from_another_sampler(setup):
    """Stage 3 starts from the searched sampler and the plain default; where they are the
    same sampler (however its options spell it), the second descent starts from the
    family's best candidate that is another sampler, and only without one repeats the first
    at the cautious learning rates."""
    _, model, _, _, _ = setup
    tune_module = sys.modules["fewstep.tuner.tune"]
    size = get_solver("unipc", order=2).grid_size(4, False)
    times = fewstep.defaults.auto(model.schedule, 4)[2].times(model.schedule, size).tolist()
    plain = tune_module.Candidate(1.0, "unipc", {"order": 2}, times, "default", None)
    spelled = plain._replace(options={"order": 2, "orders": [2] * (size - 1)})
    other = plain._replace(options={"order": 2, "orders": [2] * (size - 2) + [1]})
    assert tune_module._base_program(model, plain, 4) == tune_module._base_program(
        model, spelled, 4
    )
    assert tune_module._base_program(model, plain, 4) != tune_module._base_program(model, other, 4)
    worse = tune_module.Candidate(3.0, "dpmpp_2m", {}, times, "default", None)
    better = other._replace(loss=2.0)
    for searched, family, second in [
        (spelled, [plain, worse, better], (better, {})),
        (spelled, [plain], (spelled, tune_module.CAUTIOUS)),
        (other, [plain, worse], (plain, {})),
    ]:
        assert tune_module._starts(model, searched, family, 4) == [(searched, {}), second]


def test_a_descent_run_in_pieces_ends_where_one_run_whole_does(setup):
    """Screening pauses descents and resumes some: the pieces change nothing, the learning
    rate schedule spanning the descent's iterations either way."""
    _, model, calibration, target, config = setup
    teacher = replace(teacher_for(model, calibration), target=target)
    solver = get_solver(config.solver, **config.options)
    gaussian = config.gaussian and GaussianData.from_record(config.gaussian)
    whole = refine(model, solver, 4, config.times, teacher, iterations=23, gaussian=gaussian)
    pieces = Descent(model, solver, 4, config.times, teacher, iterations=23, gaussian=gaussian)
    for steps in (7, 1, 5):
        pieces.advance(steps)
    assert pieces.steps == 13 and not pieces.done
    pieces.advance(100)  # no further than its iterations
    assert pieces.steps == 23 and pieces.done
    assert pieces.result() == whole


def test_a_descent_leaves_a_trainable_network_untouched(setup):
    """A network whose weights require grad (as a diffusers model's do) tunes as if frozen:
    the descent differentiates the sampler's parameters only, so no weight gradient is
    computed, nor left on the user's model; under no_grad it differentiates all the same."""
    pb, _, calibration, _, _ = setup
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    net = net.double()

    def fn(x, t):
        time = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1) / 1000
        return 0.1 * net(torch.cat([x, time], 1)) + x  # epsilon-ish: finite everywhere

    model = fewstep.Model(fn, pb.schedule, "epsilon")
    teacher = Teacher.solve(model, calibration, points=20, refine=1)
    solver, grid, _ = plan(model, "unipc", 4, order=2)
    times = [float(point.t) for point in grid]
    trainable = refine(model, solver, 4, times, teacher, iterations=6)
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert refine(model, solver, 4, times, teacher, iterations=6) == trainable
    with torch.no_grad():  # as diffusers pipelines and user scripts often run
        assert refine(model, solver, 4, times, teacher, iterations=6) == trainable


def test_a_descent_in_chunks_fits_the_same_loss_holding_fewer_noises(setup):
    """``batch_size`` bounds the noises a differentiated run holds: the gradient of the
    mean, accumulated over chunks, is the same up to float rounding, and so is the descent."""
    _, model, calibration, target, _ = setup
    teacher = replace(teacher_for(model, calibration), target=target)
    solver, grid, _ = plan(model, "unipc", 4, order=2)
    times = [float(point.t) for point in grid]
    whole = refine(model, solver, 4, times, teacher, iterations=8)
    seen = []
    fn = model.fn
    chunked_model = fewstep.Model(
        lambda x, t: seen.append(x.shape[0]) or fn(x, t), model.schedule, model.prediction
    )
    chunked = refine(chunked_model, solver, 4, times, teacher, iterations=8, batch_size=5)
    assert max(seen) == 5 and len(seen) > 8 * 4 * 5  # several chunks per run
    for a, b in zip(whole[0], chunked[0], strict=True):
        assert a == pytest.approx(b, rel=1e-9)
    for a, b in zip(whole[1], chunked[1], strict=True):
        assert a.scale == pytest.approx(b.scale, rel=1e-9, abs=1e-12)
    assert chunked[3:] == pytest.approx(whole[3:], rel=1e-9)
    with pytest.raises(fewstep.ArgumentError, match="batch_size"):
        Descent(model, solver, 4, times, teacher, batch_size=0)


def test_a_descent_that_recomputes_holds_one_network_call_and_fits_the_same(setup):
    """``recompute`` keeps only each network call's inputs for the backward pass, which runs
    the call again: the activations saved for backward are a fraction of a plain run's, and
    the descent is the same."""
    pb, _, calibration, target, _ = setup
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(9, 512), torch.nn.Tanh(), torch.nn.Linear(512, 8))
    net = net.double().requires_grad_(False)

    def fn(x, t):
        time = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1) / 1000
        return 0.1 * net(torch.cat([x, time], 1)) + x

    model = fewstep.Model(fn, pb.schedule, "epsilon")
    teacher = replace(teacher_for(model, calibration), target=target)
    solver, grid, _ = plan(model, "unipc", 4, order=2)
    times = [float(point.t) for point in grid]

    def saved_bytes(recompute):
        descent = Descent(model, solver, 4, times, teacher, iterations=8, recompute=recompute)
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        calls = model.nfe
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            descent.advance(1)
        return sum(sizes), model.nfe - calls

    (plain, plain_calls), (kept, kept_calls) = saved_bytes(False), saved_bytes(True)
    assert kept < plain / 3 and kept_calls == 2 * plain_calls  # each call again in backward
    whole = refine(model, solver, 4, times, teacher, iterations=8)
    again = refine(model, solver, 4, times, teacher, iterations=8, recompute=True)
    assert again == whole


def test_tune_calls_the_model_on_at_most_batch_size_noises(setup):
    """``tune(batch_size=...)`` bounds every model call of tuning (the teacher, the scores,
    the step costs, the descents and the finish) and tunes to the same sampler."""
    pb, model, calibration, target, _ = setup
    seen = []

    def counted():  # a network of its own (no teacher cached for it)
        return fewstep.Model(
            lambda x, t: seen.append(x.shape[0]) or model.fn(x, t), pb.schedule, model.prediction
        )

    options = dict(calibration=calibration, target=target, iterations=3, progress=False)
    whole = fewstep.tune(counted(), 3, **options)
    assert max(seen) == calibration.shape[0]
    seen.clear()
    chunked_model = counted()
    chunked = fewstep.tune(chunked_model, 3, batch_size=6, **options)
    assert max(seen) == 6 and chunked.meta["teacher_calls"] > 0
    assert chunked.meta["calibration_rmse"] == pytest.approx(
        whole.meta["calibration_rmse"], rel=1e-6
    )
    assert chunked.times == pytest.approx(whole.times, rel=1e-6)
    with pytest.raises(fewstep.ArgumentError, match="batch_size"):
        fewstep.tune(chunked_model, 3, batch_size=-1, **options)


def test_stage_three_finishes_only_the_descents_best_at_the_screen(setup, monkeypatch):
    """Every start's descent runs ``SCREEN`` of its steps; the ``KEEP`` with the lowest
    held-out error there run to the end, and only those are candidates; descents that draw
    minibatches all run to the end."""
    _, model, calibration, target, _ = setup
    tune_module = sys.modules["fewstep.tuner.tune"]
    teacher = replace(teacher_for(model, calibration), target=target)
    size = get_solver("unipc", order=2).grid_size(4, False)
    candidates = [
        tune_module.Candidate(1.0, "unipc", {"order": 2}, times.tolist(), "default", None)
        for times in (
            fewstep.defaults.auto(model.schedule, 4)[2].times(model.schedule, size),
            torch.linspace(999.0, 30.0, size),
            torch.linspace(999.0, 5.0, size),
        )
    ]
    solver = get_solver("unipc", order=2)
    at_screen = []
    for c in candidates:  # each start's held-out mean 5 steps into a 20-step descent
        alone = Descent(model, solver, 4, c.times, teacher, iterations=20)
        alone.advance(5)
        at_screen.append(alone.held_out)
    assert len(set(at_screen)) == 3
    ranked = sorted(range(3), key=lambda i: at_screen[i])
    made = []
    real = tune_module._descent

    def spy(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(tune_module, "_descent", spy)
    monkeypatch.setattr(tune_module, "SCREEN", 0.25)
    for keep in (1, 2, 5):
        monkeypatch.setattr(tune_module, "KEEP", keep)
        made.clear()
        bar = tqdm(total=0, disable=True)
        finished = tune_module._descend(
            model, teacher, [(c, {}) for c in candidates], 4, "full", 20, bar
        )
        kept = sorted(ranked[:keep])
        assert [d.steps for d in made] == [20 if i in kept else 5 for i in range(3)]
        assert [start for start, *_ in finished] == [candidates[i] for i in kept]
        assert bar.total == 3 * 5 + 15 * len(kept)
        for i, (start, loss, times, corrections, calls) in zip(kept, finished, strict=True):
            assert (times, corrections, calls) == made[i].result()[:3]
            config = tune_module._config(
                model, "unipc", start.options, 4, times, None, corrections, calls
            )
            assert loss == tune_module.config_loss(model, teacher, config)
    # descents that draw minibatches are not screened: every one runs to the end
    monkeypatch.setattr(gradient, "FIT_BATCH", 6)
    made.clear()
    bar = tqdm(total=0, disable=True)
    starts = [(c, {}) for c in candidates]
    finished = tune_module._descend(model, teacher, starts, 4, "full", 20, bar)
    assert [d.steps for d in made] == [20] * 3 and len(finished) == 3 and bar.total == 60
    # ... and with draws=2 the start whose descent ended lowest descends again on other
    # minibatches, to another end
    made.clear()
    bar = tqdm(total=0, disable=True)
    again = tune_module._descend(model, teacher, starts, 4, "full", 20, bar, draws=2)
    assert [d.steps for d in made] == [20] * 4 and bar.total == 80
    assert again[:3] == finished  # draw 0 is the descent draws=1 runs
    lead = min(range(3), key=lambda i: finished[i][1])
    assert again[3][0] is candidates[lead] and again[3][2] != finished[lead][2]


def test_more_draws_never_keep_a_higher_calibration_loss(setup, monkeypatch):
    """draws=2 runs draws=1's descents and others beside them and keeps the lowest loss;
    the default runs DRAWS; without minibatches every draws count runs the same descents."""
    _, model, calibration, target, _ = setup
    options = dict(calibration=calibration, target=target, iterations=10, progress=False)
    whole = [fewstep.tune(model, 3, draws=k, **options).meta["tuning_calls"] for k in (1, 3)]
    assert whole[0] == whole[1]
    monkeypatch.setattr(gradient, "FIT_BATCH", 6)
    one = fewstep.tune(model, 3, draws=1, **options)
    two = fewstep.tune(model, 3, draws=2, **options)
    default = fewstep.tune(model, 3, **options)
    assert sys.modules["fewstep.tuner.tune"].DRAWS == 3
    assert two.meta["calibration_rmse"] <= one.meta["calibration_rmse"]
    assert default.meta["calibration_rmse"] <= two.meta["calibration_rmse"]
    assert one.meta["tuning_calls"] < two.meta["tuning_calls"] < default.meta["tuning_calls"]
    with pytest.raises(fewstep.ArgumentError, match="draws"):
        fewstep.tune(model, 3, draws=0, **options)


def test_extra_draws_descend_from_the_start_whose_first_descent_ended_lowest(setup, monkeypatch):
    """Minibatch descents: one from every start (draw 0), then draws 1 and 2 from the start
    whose first descent ended with the lowest calibration loss, and from no other."""
    _, model, calibration, target, _ = setup
    tune_module = sys.modules["fewstep.tuner.tune"]
    monkeypatch.setattr(gradient, "FIT_BATCH", 6)
    begun, ended = [], []
    real_descent, real_descend = tune_module._descent, tune_module._descend

    def descent(model, teacher, start, *args):
        begun.append((start, args[-1]))  # (start, draw seed)
        return real_descent(model, teacher, start, *args)

    def descend(*args):
        ended.extend(real_descend(*args))
        return ended

    monkeypatch.setattr(tune_module, "_descent", descent)
    monkeypatch.setattr(tune_module, "_descend", descend)
    fewstep.tune(model, 3, calibration=calibration, target=target, iterations=10, progress=False)
    firsts = [start for start, seed in begun if seed == 0]
    assert len(firsts) >= 2 and [seed for _, seed in begun[len(firsts) :]] == [1, 2]
    lead = min(range(len(firsts)), key=lambda i: ended[i][1])
    assert all(start is firsts[lead] for start, _ in begun[len(firsts) :])
    assert len(ended) == len(firsts) + 2


def test_the_order_search_runs_no_trial_that_compiles_to_the_current_sampler(setup, monkeypatch):
    """A multistep's first step has one evaluation of history, so every order there is the
    same sampler: the search spends no calibration run on it (or on any other tie), and
    still finds an order that lowers the loss."""
    _, model, calibration, target, _ = setup
    tune_module = sys.modules["fewstep.tuner.tune"]
    size = get_solver("unipc", order=3).grid_size(5, False)
    times = fewstep.defaults.auto(model.schedule, 5)[2].times(model.schedule, size).tolist()
    teacher = replace(teacher_for(model, calibration), target=target)
    start = tune_module.Candidate(
        calibration_loss(model, teacher, "unipc", {"order": 3}, 5, times, None),
        "unipc",
        {"order": 3},
        times,
        "default",
        None,
    )
    held = {"program": tune_module._base_program(model, start, 5), "loss": start.loss}
    tried = []
    real = tune_module.calibration_loss

    def spy(model, teacher, solver, options, *args):
        # the search's current sampler, followed as it improves
        program = tune_module._base_program(model, start._replace(options=options), 5)
        assert program != held["program"], f"orders {options['orders']} tie the current"
        tried.append(list(options["orders"]))
        value = real(model, teacher, solver, options, *args)
        if value < held["loss"]:
            held.update(program=program, loss=value)
        return value

    monkeypatch.setattr(tune_module, "calibration_loss", spy)
    best = tune_module._search_orders(model, teacher, start, 5)
    assert tried and all(orders[0] == 3 for orders in tried)  # step 0 never varied
    assert best.loss <= start.loss and len(best.options["orders"]) == size - 1


def test_tune_command_calibrates_exact_problems_on_more_noises_than_networks():
    from fewstep.tuner.cli import calibration_count

    assert calibration_count("gmm-vp", None) == 1024 and calibration_count("gmm-flow", None) == 1024
    assert calibration_count("digits-unet", None) == 64
    assert calibration_count("gmm-vp", 8) == 8  # given: kept


def test_tune_command_spreads_calibration_labels_over_all_classes():
    from fewstep.tuner.cli import calibration_labels

    assert calibration_labels(12, 10).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    spread = calibration_labels(64, 1000)  # DiT: 64 noises, 1000 classes
    assert spread[0] == 0 and spread[-1] > 980 and len(set(spread.tolist())) == 64


def test_tune_command_writes_a_config_that_sample_accepts(tmp_path, capsys):
    from fewstep.cli import main

    args = ["--model", "gmm-vp", "--nfe", "3", "--calibration", "8", "--iterations", "3"]
    tune = ["tune", *args, "--model-option", "dim=3", "--batch-size", "4", "--recompute"]
    tune += ["--draws", "2"]  # no minibatches at 8 noises: the same descents
    assert main([*tune, "--out", str(tmp_path)]) == 0
    path = tmp_path / "gmm-vp-nfe3.json"
    assert SamplerConfig.load(path).nfe == 3
    assert main(["sample", "--config", str(path), "--num-samples", "4", "--dim", "3"]) == 0
    out = capsys.readouterr().out
    assert "first step, calibration RMSE" in out and "3 model calls" in out
