"""What the tuner's finish (stage 6) changes: one tuning per case, its result sampled with and
without the finish (the config's last correction) on the held-out noises of bench/tuner.py.

- gmm-vp at the given NFEs: mean and median RMSE against the exact ODE solution on 8192
  noises, the samples that end at another mixture mean than the exact solution's, and the
  share of noises whose error the finish lowers;
- digits-unet at guidance 1, NFE 5 (1000 noises, equal classes): RMSE and Frechet distance
  to the 500-call teacher, per-class pixel variance and the classifier features' covariance
  trace against the teacher's (does the finish shrink the samples?).

    python bench/finish.py

Writes bench/results/finish.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tuner import REFERENCES, _wrong_modes

import fewstep
from fewstep.guidance import class_inputs
from fewstep.io import atomic_write_text
from fewstep.reference import problem, rmse

torch.set_num_threads(2)


def without_finish(model, config):
    """The tuned config with its finish dropped (its last correction), or None where the
    tuner kept no finish."""
    if config.program(model).finish is None:
        return None
    return replace(config, corrections=config.corrections[:-1])


def gmm_lines(nfes, args) -> list[str]:
    pb = problem("gmm-vp", cache_dir=REFERENCES)
    model = pb.model()
    noise, cal = pb.noise(args.samples, seed=0), pb.noise(args.calibration, seed=11)
    ref, ref_cal = pb.reference(noise), pb.reference(cal)
    lines = [
        "| NFE | mean without / with | median without / with | at another mode without / "
        "with | noises improved |",
        "|---|---|---|---|---|",
    ]
    for n in nfes:
        config = fewstep.tune(model, n, calibration=cal, target=ref_cal, progress=False)
        plain = without_finish(model, config)
        if plain is None:
            lines.append(f"| {n} | the tuner kept no finish | | | |")
            continue
        x_with = fewstep.sample(model, noise, config=config)
        x_without = fewstep.sample(model, noise, config=plain)
        e_with, e_without = rmse(x_with, ref), rmse(x_without, ref)
        lines.append(
            f"| {n} | {e_without.mean():.4g} / {e_with.mean():.4g} | {e_without.median():.4g} / "
            f"{e_with.median():.4g} | {_wrong_modes(x_without, ref, pb.gmm)} / "
            f"{_wrong_modes(x_with, ref, pb.gmm)} | {(e_with < e_without).float().mean():.1%} |"
        )
        print(lines[-1], flush=True)
    return lines


def digits_lines(args) -> list[str]:
    from fewstep.models import load
    from fewstep.quality import digits_metrics, frechet_distance, teacher

    model = load("digits-unet", guidance_scale=1.0)
    labels = torch.arange(10).repeat_interleave(args.digits_samples // 10)
    noise = fewstep.randn((len(labels), *model.image_shape), seed=1000)
    cond, uncond = class_inputs(model, labels)
    ref = teacher(model, noise, cond=cond, uncond=uncond)
    cal = fewstep.randn((args.digits_calibration, *model.image_shape), seed=2000)
    cal_cond, cal_uncond = class_inputs(model, torch.arange(args.digits_calibration) % 10)
    config = fewstep.tune(
        model, 5, calibration=cal, cond=cal_cond, uncond=cal_uncond, progress=False
    )
    metrics = digits_metrics()
    ref_features = metrics.features(ref)

    def spread(x):
        per_class = [x[labels == c].var(0).mean() for c in range(10)]
        return float(torch.stack(per_class).mean())

    def row(name, x):
        features = metrics.features(x)
        return (
            f"| {name} | {float(rmse(x, ref).mean()):.5f} | "
            f"{frechet_distance(features, ref_features):.3f} | {spread(x):.4f} | "
            f"{np.trace(np.cov(features.T)):.1f} |"
        )

    lines = [
        "| sampler | RMSE | Frechet distance to the teacher | per-class pixel variance | "
        "feature covariance trace |",
        "|---|---|---|---|---|",
        row("teacher", ref),
    ]
    plain = without_finish(model, config)
    for name, c in (("tuned, without the finish", plain), ("tuned", config)):
        if c is None:
            lines.append(f"| {name} | the tuner kept no finish | | | |")
            continue
        lines.append(row(name, fewstep.sample(model, noise, config=c, cond=cond, uncond=uncond)))
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfes", type=int, nargs="+", default=[5, 8])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--digits-samples", type=int, default=1000)
    parser.add_argument("--digits-calibration", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    start = time.perf_counter()
    gmm = gmm_lines(args.nfes, args)
    digits = digits_lines(args)
    minutes = (time.perf_counter() - start) / 60
    text = "\n".join(
        [
            "# The tuner's finish, on and off",
            "",
            f"`python bench/finish.py`: {minutes:.1f} min on 2 CPU cores.",
            "",
            f"## gmm-vp, {args.samples} held-out noises, {args.calibration} calibration",
            "",
            *gmm,
            "",
            f"## digits-unet, guidance 1, NFE 5, {args.digits_samples} held-out samples",
            "",
            *digits,
            "",
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "finish.md", text)
    print(text)


if __name__ == "__main__":
    main()
