"""``fewstep tune``: calibrate a sampler for a model at one or more NFE budgets and save
each configuration as JSON (for ``fewstep.sample(config=...)``, ``fewstep sample --config``,
``fewstep generate --config`` and the diffusers scheduler)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..generation.cli import add_model_arguments, import_from_cwd, parse_options, parse_shape
from ..guidance import class_inputs
from ..noise import randn
from .tune import DRAWS, METHODS, tune

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


def _calibration(args: argparse.Namespace, count: int):
    """(model, calibration noises, cond, uncond, exact target or None) for ``--model``."""
    from ..generation import sources

    name = args.model
    options, weights, _ = sources.identify(name, parse_options(args.model_option, "--model-option"))
    model, shape = sources.load(name, options, args.guidance, weights, parse_shape(args.shape))
    noise = randn((count, *shape), seed=args.seed)
    if sources.kind(name) == "gmm":
        from ..reference import problem

        pb = problem(name, **options)
        return model, noise, None, None, pb.reference(noise)
    classes = getattr(model, "num_classes", None)
    if classes is None:
        return model, noise, None, None, None
    return model, noise, *class_inputs(model, calibration_labels(count, classes)), None


def calibration_labels(count: int, classes: int) -> torch.Tensor:
    """The calibration noises' classes: every class in turn, or spread evenly over the
    classes where there are fewer noises than classes (DiT's 1000)."""
    index = torch.arange(count)
    return index % classes if count >= classes else index * classes // count


def model_first(name: str, given: bool | None) -> bool:
    """Whether the sampler calls the model first: ``given``, or for a pipeline directory
    yes, since its configs are meant for ``FewstepScheduler`` in the pipeline, which calls
    the network on its initial latents first."""
    from ..generation import sources

    return given if given is not None else sources.kind(name) == "diffusers"


def _file_stem(name: str) -> str:
    """The config files' name stem: the model, its json's stem, or its directory's name."""
    from ..generation import sources

    path = Path(name)
    return path.stem if sources.kind(name) == "digits" else path.name.replace(":", "-")


def _cmd_tune(args: argparse.Namespace) -> int:
    import_from_cwd()
    count = calibration_count(args.model, args.calibration)
    model, noise, cond, uncond, target = _calibration(args, count)
    out = Path(args.out)
    stem = _file_stem(args.model)
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
            analytic=not model_first(args.model, args.model_first),
            batch_size=args.batch_size,
            recompute=args.recompute,
            draws=args.draws,
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
        help="a shipped digits model (or DIR/NAME.json), an exact problem (gmm-vp, ...), a "
        "diffusers pipeline's save_pretrained DIR (unconditional or class-conditional) or "
        "package.module:factory",
    )
    add_model_arguments(p)
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
        action=argparse.BooleanOptionalAction,
        default=None,
        help="no analytic first step: a config the diffusers scheduler can run (default for "
        "a pipeline directory; --no-model-first lets the tuner try the analytic one there)",
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
    p.add_argument(
        "--draws",
        type=int,
        default=DRAWS,
        help="minibatch descents (thousands of noises) from the leading start, on other "
        f"draws; the lowest calibration loss is kept (default {DRAWS})",
    )
    p.add_argument("--out", default="out/tune", help="directory of the config JSON files")
    p.set_defaults(func=_cmd_tune)
