"""Derive the parameters of ``solver="auto"`` (fewstep/defaults.py) from measurements.

For each schedule family, each candidate solver and each NFE, fit the ``Warped`` spacing
(a, b, end) to minimise the mean RMSE against the exact ODE solution, pooled (geometric
mean) over calibration mixtures that are *not* the benchmark's (other dimensions,
component counts and seeds), then keep the best solver per NFE. A coarse screen over the
parameters picks the starting point of a Nelder-Mead refinement.

    python bench/calibrate_defaults.py [--family vp flow edm] [--quick]

Prints the table that fewstep/defaults.py holds, and writes bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

import fewstep
from fewstep.io import atomic_write_text
from fewstep.reference import GaussianMixture, rmse
from fewstep.reference.problems import Problem
from fewstep.spacing import Warped, classical_sigma

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
CALIBRATION = [(32, 4, 101), (48, 6, 102), (64, 12, 103), (96, 8, 104)]  # (dim, components, seed)
FAMILIES = {
    "vp": (lambda: fewstep.VPSchedule.scaled_linear(), "epsilon"),
    "flow": (lambda: fewstep.FlowSchedule(), "flow"),
    "edm": (lambda: fewstep.EDMSchedule(), "sample"),
}
CANDIDATES = {
    "vp": [
        ("unipc", {"order": 2}),
        ("unipc", {"order": 3}),
        ("deis", {"variant": "logrho"}),
        ("dpmpp_3m", {}),
        ("dpmpp_2m", {}),
    ],
    "edm": [
        ("unipc", {"order": 2}),
        ("unipc", {"order": 3}),
        ("deis", {"variant": "logrho"}),
        ("dpmpp_3m", {}),
        ("dpmpp_2m", {}),
    ],
    "flow": [
        ("unipc", {"order": 2, "frame": "classical"}),
        ("unipc", {"order": 3, "frame": "classical"}),
        ("dpmpp_2m", {"frame": "classical"}),
        ("dpmpp_3m", {"frame": "classical"}),
        ("deis", {}),
        ("lms", {}),
    ],
}


def objective(problems, solver, options, nfe, params):
    a, b, end = (math.exp(v) for v in params)
    spacing = Warped(a, b, end)
    logs = []
    for pb, noise, ref in problems:
        try:
            x = fewstep.sample(
                pb.model(), noise, solver=solver, nfe=nfe, spacing=spacing, **options
            )
        except fewstep.FewstepError:
            return math.inf
        err = float(rmse(x, ref).mean())
        logs.append(math.log(err) if math.isfinite(err) else 50.0)
    return float(np.mean(logs))


def calibrate(family: str, samples: int, nfes, maxiter: int):
    make, prediction = FAMILIES[family]
    problems = []
    for dim, comp, seed in CALIBRATION:
        pb = Problem(
            f"cal-{dim}-{comp}", GaussianMixture.random(dim, comp, seed), make(), prediction
        )
        noise = pb.noise(samples, seed=seed)
        problems.append((pb, noise, pb.reference(noise)))
    schedule = problems[0][0].schedule
    lo = float(classical_sigma(schedule, schedule.t_min))
    hi = float(classical_sigma(schedule, schedule.t_max))
    screen = list(
        itertools.product(
            [math.log(v) for v in (0.7, 1.0, 1.5)],
            [math.log(v) for v in (0.7, 1.0, 1.5)],
            [math.log(lo * f) for f in (1.0, 3.0, 10.0, 30.0) if lo * f < hi],
        )
    )
    table = {}
    for nfe in nfes:
        best = None
        for solver, options in CANDIDATES[family]:
            loss = functools.partial(objective, problems, solver, options, nfe)
            start = min(screen, key=loss)
            simplex = np.array([start] + [np.add(start, 0.3 * np.eye(3)[i]) for i in range(3)])
            res = minimize(
                loss,
                start,
                method="Nelder-Mead",
                options={
                    "maxiter": maxiter,
                    "xatol": 0.02,
                    "fatol": 1e-3,
                    "initial_simplex": simplex,
                },
            )
            value = float(res.fun)
            if best is None or value < best["log_error"]:
                a, b, end = (math.exp(v) for v in res.x)
                best = dict(
                    solver=solver,
                    options=options,
                    a=a,
                    b=b,
                    end=None if end <= lo * 1.0001 else end,
                    log_error=value,
                )
        table[nfe] = best
        print(
            f"[{family}] NFE {nfe:3d}: {best['solver']} {best['options']} a={best['a']:.3f} "
            f"b={best['b']:.3f} end={best['end']} geo-mean RMSE {math.exp(best['log_error']):.3e}",
            flush=True,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", default=["vp", "flow", "edm"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--maxiter", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nfes = (5, 10) if args.quick else NFES
    start = time.perf_counter()
    out = {}
    for family in args.family:
        out[family] = calibrate(
            family, 16 if args.quick else args.samples, nfes, 5 if args.quick else args.maxiter
        )
    print(f"{(time.perf_counter() - start) / 60:.1f} min")
    print(
        "AUTO_TABLE = "
        + json.dumps(
            {
                f: {
                    n: [
                        r["solver"],
                        r["options"],
                        round(r["a"], 4),
                        round(r["b"], 4),
                        None if r["end"] is None else round(r["end"], 5),
                    ]
                    for n, r in t.items()
                }
                for f, t in out.items()
            },
            indent=1,
        )
    )
    atomic_write_text(
        Path(__file__).parent / "results" / "calibration.json", json.dumps(out, indent=1)
    )


if __name__ == "__main__":
    main()
