"""The program core: no host-device synchronisation in the loop, cached plans, frames."""

import pytest
import torch

import fewstep
from fewstep.reference import problem
from fewstep.sampling import _FiniteGuard
from fewstep.spacing import Warped, classical_sigma


@pytest.mark.parametrize(
    "solver,options",
    [
        ("unipc", {}),
        ("dpmpp_3m", {"warmup": "singlestep"}),
        ("heun", {}),
        ("dpmpp_3s", {}),
        ("lms", {}),
        ("pndm", {}),
    ],
)
def test_the_loop_never_reads_device_values(solver, options):
    """On the meta device any host read (.item(), bool(tensor), .cpu()) raises: the executor,
    the model adapter and the finiteness guard run a whole program without one; the guard's
    flags are read once, after the loop."""
    schedule = fewstep.VPSchedule.scaled_linear()
    model = fewstep.Model(
        lambda x, t, y: torch.zeros_like(x), schedule, "epsilon", guidance_scale=3.0
    )
    _, _, program = fewstep.plan(model, solver, 12, **options)
    x = torch.empty(4, 8, device="meta")
    guard = _FiniteGuard(x.device)
    cond = {"y": torch.empty(4, device="meta")}

    def evaluate(state, ins):
        pred = model.evaluate(state, ins.point, cond, cond)
        guard.check(pred, ins.step, ins.point.t)
        return pred

    out = program.run(evaluate, x)
    assert out.device.type == "meta" and len(guard.flags) == 12


def test_plans_are_cached_and_pure():
    pb = problem("gmm-vp", dim=8, components=2)
    model = pb.model()
    a = fewstep.plan(model, "unipc", 10)
    b = fewstep.plan(model, "unipc", 10)
    assert a[2] is b[2]
    c = fewstep.plan(model, "unipc", 10, order=2)
    assert c[2] is not a[2]
    noise = pb.noise(4)
    torch.testing.assert_close(
        fewstep.sample(model, noise, solver="unipc", nfe=10),
        fewstep.sample(pb.model(), noise, solver="unipc", nfe=10),
    )


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-flow", "gmm-edm"])
def test_warped_spacing(name):
    sch = problem(name, dim=4, components=1).schedule
    uniform = Warped().times(sch, 9)
    assert float(uniform[0]) == sch.t_max and float(uniform[-1]) == sch.t_min
    log_tau = classical_sigma(sch, uniform[1:-1]).log()
    steps = log_tau[1:] - log_tau[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-6, atol=1e-9)
    early = Warped(1.5, 0.8, end=0.2).times(sch, 7)
    assert abs(float(classical_sigma(sch, early[-1:])) - 0.2) < 1e-9
    assert bool(torch.all(early[1:] < early[:-1]))
    with pytest.raises(fewstep.ArgumentError):
        Warped(0, 1)


def test_classical_frame_is_the_usual_one_on_vp():
    pb = problem("gmm-vp", dim=8, components=2)
    noise = pb.noise(4)
    for solver in ("dpmpp_2m", "unipc", "dpmpp_3s"):
        a = fewstep.sample(pb.model(), noise, solver=solver, nfe=8)
        b = fewstep.sample(pb.model(), noise, solver=solver, nfe=8, frame="classical")
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(fewstep.ArgumentError, match="frame"):
        fewstep.sample(pb.model(), noise, solver="dpm_solver", frame="classical")
