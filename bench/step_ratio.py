"""What ``max_step_ratio`` changes: multistep solvers on rectified flow's default grid, whose
last step is far longer in log-SNR than the ones before it, with the guard (default) and
with the reference rule (``max_step_ratio=None``).

    python bench/step_ratio.py

Prints held-out mean RMSE against the exact ODE solution (deterministic solvers) and the
sliced W2 to exact draws over the exact-vs-exact distance (SDE solvers), on the flow
mixture of dimension 16 with 8 components, 256 samples.
"""

from __future__ import annotations

import torch

import fewstep
from fewstep.reference import problem, rmse, sliced_wasserstein

DETERMINISTIC = ("dpmpp_2m", "dpmpp_3m", "unipc")
STOCHASTIC = ("dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver")
NFES = (5, 8, 10)


def main() -> None:
    torch.set_num_threads(2)
    pb = problem("gmm-flow", dim=16, components=8, seed=0)
    model, noise = pb.model(), pb.noise(256, seed=0)
    ref = pb.reference(noise)
    exact = pb.gmm.sample(256, seed=100)
    floor = sliced_wasserstein(pb.gmm.sample(256, seed=101), exact)
    rules = {"guard (default)": {}, "reference rule": {"max_step_ratio": None}}
    print("| solver | metric | rule | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---" * (len(NFES) + 3) + "|")
    for solver in DETERMINISTIC + STOCHASTIC:
        stochastic = solver in STOCHASTIC
        metric = "SW2 / floor" if stochastic else "mean RMSE"
        for rule, options in rules.items():
            cells = []
            for nfe in NFES:
                seed = {"seed": 0} if stochastic else {}
                x = fewstep.sample(model, noise, solver=solver, nfe=nfe, **seed, **options)
                value = (
                    sliced_wasserstein(x, exact) / floor
                    if stochastic
                    else float(rmse(x, ref).mean())
                )
                cells.append(f"{value:.3g}")
            print(f"| {solver} | {metric} | {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
