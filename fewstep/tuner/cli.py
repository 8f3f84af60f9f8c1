"""``fewstep tune``: calibrate a sampler for a model at one or more NFE budgets and save
each configuration as JSON (for ``fewstep.sample(config=...)``, ``fewstep sample --config``,
``fewstep generate --config`` and the diffusers scheduler)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..guidance import class_inputs
from ..noise import randn
from .tune import METHODS, tune

#: calibration noises when ``--calibration`` is not given: an exact problem's calls are cheap
#: and 64 noises overfit it (gmm-vp at 5 calls: held-out RMSE 8.9e-3 from 64 noises, 7.6e-3
#: from 1024, where the calibration RMSE printed was 5x and 1.3x below it); a network's are not
EXACT_CALIBRATION = 1024
NETWORK_CALIBRATION = 64


def calibration_count(name: str, given: int | None) -> int:
    """The number of calibration noises: ``given``, or the default for the model's kind."""
    from ..generation import sources

    if given is not None:
        return given
    return EXACT_CALIBRATION if sources.kind(name) == "gmm" else NETWORK_CALIBRATION


def _calibration(name: str, count: int, seed: int, guidance: float):
    """(model, calibration noises, cond, uncond, exact target or None) for a model value."""
    from ..generation import sources

    options, weights, _ = sources.identify(name, {})
    model, shape = sources.load(name, options, guidance, weights, None)
    noise = randn((count, *shape), seed=seed)
    if sources.kind(name) == "gmm":
        from ..reference import problem

        pb = problem(name, **options)
        return model, noise, None, None, pb.reference(noise)
    classes = getattr(model, "num_classes", None)
    if classes is None:
        return model, noise, None, None, None
    labels = torch.arange(count) % classes
    return model, noise, *class_inputs(model, labels), None


def _cmd_tune(args: argparse.Namespace) -> int:
    count = calibration_count(args.model, args.calibration)
    model, noise, cond, uncond, target = _calibration(args.model, count, args.seed, args.guidance)
    out = Path(args.out)
    stem = Path(args.model).stem
    for nfe in args.nfe:
        config = tune(
            model,
            nfe,
            calibration=noise,
            cond=cond,
            uncond=uncond,
            target=target,
            solver=args.solver,
            method=args.method,
            iterations=args.iterations,
            analytic=not args.model_first,
            batch_size=args.batch_size,
            recompute=args.recompute,
        )
        path = out / f"{stem}-nfe{nfe}.json"
        config.save(path)
        meta = config.meta
        print(
            f"nfe {nfe}: {config.solver} {config.options}, "
            f"{meta['first_step']} first step, calibration RMSE "
            f"{meta['calibration_rmse_start']:.4e} -> {meta['calibration_rmse']:.4e} "
            f"({meta['teacher_calls'] + meta['tuning_calls']} model calls, "
            f"{meta['seconds']:.0f} s) -> {path}"
        )
    return 0


def add_parser(subparsers) -> None:
    """Register ``fewstep tune`` on the main parser's subcommands."""
    p = subparsers.add_parser(
        "tune", help="calibrate a sampler to a model and NFE budget; writes a config JSON"
    )
    p.add_argument(
        "--model",
        default="gmm-vp",
        help="a shipped digits model (or DIR/NAME.json) or an exact problem (gmm-vp, ...)",
    )
    p.add_argument("--nfe", type=int, nargs="+", default=[5], help="one or more budgets")
    p.add_argument(
        "--calibration",
        type=int,
        default=None,
        help=f"number of calibration noises (default {EXACT_CALIBRATION} for an exact "
        f"problem, {NETWORK_CALIBRATION} for a network)",
    )
    p.add_argument("--seed", type=int, default=11, help="seed of the calibration noises")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--solver", default=None, help="fix the base solver (unipc, dpmpp_2m, ...)")
    p.add_argument("--method", default="full", choices=METHODS)
    p.add_argument("--iterations", type=int, default=600, help="gradient steps per descent")
    p.add_argument(
        "--model-first",
        action="store_true",
        help="no analytic first step: a config the diffusers scheduler can run",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the most calibration noises one run holds (bounds memory; default all)",
    )
    p.add_argument(
        "--recompute",
        action="store_true",
        help="run each network call again in the backward pass instead of keeping its "
        "activations (memory of one call, not nfe; one more call per call)",
    )
    p.add_argument("--out", default="out/tune", help="directory of the config JSON files")
    p.set_defaults(func=_cmd_tune)
