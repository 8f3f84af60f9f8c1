"""The digits section's tuning call alone: digits-unet tuned at NFE 5 with the calibration
noises, labels and iterations of bench/tuner.py's digits section, in a process that has run
nothing before it, then scored on that section's held-out noises (mean per-sample RMSE
against the same 500-call teacher).

The section tunes after sampling every untuned solver; where this run's RMSE differs from the
section's tuned row, what the process ran before changed the descent's end point through
float rounding alone (the inputs are equal bit for bit).

    python bench/tuner_alone.py --guidance 2
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.guidance import class_inputs
from fewstep.models import load
from fewstep.quality import teacher
from fewstep.reference import rmse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=600)
    args = parser.parse_args()
    model = load("digits-unet", guidance_scale=args.guidance)
    cal = fewstep.randn((args.calibration, *model.image_shape), seed=2000)
    cal_cond, cal_uncond = class_inputs(model, torch.arange(args.calibration) % 10)
    start = time.perf_counter()
    config = fewstep.tune(
        model,
        5,
        calibration=cal,
        cond=cal_cond,
        uncond=cal_uncond,
        iterations=args.iterations,
        progress=False,
    )
    seconds = time.perf_counter() - start
    labels = torch.arange(10).repeat_interleave(args.samples // 10)
    noise = fewstep.randn((len(labels), *model.image_shape), seed=1000)
    cond, uncond = class_inputs(model, labels)
    reference = teacher(model, noise, cond=cond, uncond=uncond)
    x = fewstep.sample(model, noise, config=config, cond=cond, uncond=uncond)
    print(
        f"digits-unet guidance {args.guidance:g}, tuned NFE 5 alone: held-out RMSE "
        f"{float(rmse(x, reference).mean()):.4f} on {len(labels)} noises; calibration RMSE "
        f"{config.meta['calibration_rmse']:.5f} (from {config.meta['calibration_rmse_start']:.5f}"
        f"), first step {config.meta['first_step']}, {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
