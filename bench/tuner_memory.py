"""What the tuner holds in memory on digits-unet: the process's peak resident memory added
by a teacher solve, by the grid search's step costs, and by gradient-descent steps at NFE 5
with and without ``batch_size`` and ``recompute``, each measured in a fresh process (peak
RSS only grows), with the time taken.

    python bench/tuner_memory.py --noises 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import fewstep
from fewstep.guidance import class_inputs
from fewstep.models import load
from fewstep.solvers import get_solver
from fewstep.tuner.gradient import Descent
from fewstep.tuner.grid import step_costs
from fewstep.tuner.teacher import Teacher

CASES = [("teacher", None, False), ("step costs", None, False)] + [
    ("descent", batch_size, recompute) for batch_size in (None, 16) for recompute in (False, True)
]
STEPS = 5


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(kind: str, batch_size: int | None, recompute: bool, noises: int) -> dict:
    """One case, in this process: peak RSS before and after, and seconds per step."""
    torch.set_num_threads(2)
    model = load("digits-unet")
    noise = fewstep.randn((noises, *model.image_shape), seed=2000)
    cond, uncond = class_inputs(model, torch.arange(noises) % 10)
    if kind == "teacher":
        before, start = _peak_mib(), time.perf_counter()
        Teacher.solve(model, noise, cond=cond, uncond=uncond, batch_size=batch_size)
        return {"before": before, "after": _peak_mib(), "seconds": time.perf_counter() - start}
    if kind == "step costs":  # the grid search's costs on a 160-point teacher
        teacher = Teacher.solve(model, noise, refine=1, cond=cond, uncond=uncond)
        before, start = _peak_mib(), time.perf_counter()
        step_costs(model, teacher)
        return {"before": before, "after": _peak_mib(), "seconds": time.perf_counter() - start}
    teacher = Teacher.solve(model, noise, points=12, refine=1, cond=cond, uncond=uncond)
    times = [float(point.t) for point in fewstep.plan(model, "unipc", 5, order=2)[1]]
    solver = get_solver("unipc", order=2)
    descent = Descent(model, solver, 5, times, teacher, batch_size=batch_size, recompute=recompute)
    before, start = _peak_mib(), time.perf_counter()
    descent.advance(STEPS)
    seconds = (time.perf_counter() - start) / STEPS
    return {"before": before, "after": _peak_mib(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noises", type=int, default=256)
    parser.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(measure(*CASES[args.case], args.noises)))
        return
    print(f"digits-unet, {args.noises} calibration noises, NFE 5 descents ({STEPS} steps)")
    print("| run | batch_size | recompute | peak RSS added | seconds |")
    print("|---|---|---|---|---|")
    for index, (kind, batch_size, recompute) in enumerate(CASES):
        command = [sys.executable, __file__, "--noises", str(args.noises), "--case", str(index)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        unit = "per step" if kind == "descent" else "in all"
        print(
            f"| {kind} | {batch_size} | {recompute if kind == 'descent' else '-'} | "
            f"{row['after'] - row['before']:.0f} MiB | {row['seconds']:.2f} {unit} |"
        )


if __name__ == "__main__":
    main()
