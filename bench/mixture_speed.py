"""How fast the exact mixture runs as a model under the tuner: the teacher's solve of the
calibration noises (forward calls) and gradient-descent steps through the sampler (forward
and backward calls), as ``bench/tuner.py``'s mixtures section runs them. To compare
fewstep versions, run it with another checkout first on the path:

    python bench/mixture_speed.py --problem gmm-vp --nfe 10
    PYTHONPATH=/path/to/other/checkout python bench/mixture_speed.py --problem gmm-vp --nfe 10
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tuner import REFERENCES

import fewstep
from fewstep import defaults
from fewstep.reference import problem
from fewstep.solvers import get_solver
from fewstep.tuner.gradient import Descent
from fewstep.tuner.teacher import Teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gmm-vp")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50, help="gradient steps timed")
    args = parser.parse_args()
    pb = problem(args.problem, cache_dir=REFERENCES)
    model = pb.model()
    cal = pb.noise(args.calibration, seed=11)
    start = time.perf_counter()
    teacher = Teacher.solve(model, cal)
    solve = time.perf_counter() - start
    teacher = replace(teacher, target=pb.reference(cal))
    name, options, spacing = defaults.auto(model.schedule, args.nfe)
    solver = get_solver(name, **options)
    times = spacing.times(model.schedule, solver.grid_size(args.nfe, False)).tolist()
    descent = Descent(model, solver, args.nfe, times, teacher, iterations=600)
    start = time.perf_counter()
    descent.advance(args.steps)
    steps = time.perf_counter() - start
    print(f"fewstep from {Path(fewstep.__file__).parent}")
    print(
        f"{pb.name}, {args.calibration} calibration noises: teacher solve {solve:.1f} s "
        f"({teacher.calls} calls); {args.steps} descent steps at NFE {args.nfe} {steps:.2f} s "
        f"({1e3 * steps / args.steps:.0f} ms a step)"
    )


if __name__ == "__main__":
    main()
