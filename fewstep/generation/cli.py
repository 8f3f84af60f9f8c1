"""``fewstep generate``: the command-line face of ``fewstep.generation.generate``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..errors import ArgumentError
from .driver import generate


def _value(text: str) -> Any:
    """A JSON value (number, true, [..]) or else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: list[str] | None, argument: str) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a dict of JSON values (``ArgumentError`` names ``argument``)."""
    options = {}
    for pair in pairs or []:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise ArgumentError(argument, f"expected KEY=VALUE, got {pair!r}")
        options[key] = _value(text)
    return options


def _labels(text: str) -> str | int | None:
    if text in ("auto", "cycle"):
        return text
    if text == "none":
        return None
    if text.isdigit():
        return int(text)
    raise ArgumentError("--labels", f"got {text!r}", "auto, cycle, none or a class index")


def parse_shape(text: str | None) -> list[int] | None:
    """``--shape C,H,W`` as a list of integers (None where not given)."""
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError as err:
        raise ArgumentError("--shape", f"expected C,H,W integers, got {text!r}") from err


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model-option`` and ``--shape``: how a ``--model`` is loaded (generate and tune)."""
    parser.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="dim=8 for gmm-*; mu=0.8 (dynamic shift) or torch_dtype=bfloat16 for a pipeline",
    )
    parser.add_argument("--shape", default=None, help="C,H,W of a factory model's samples")


def import_from_cwd() -> None:
    """Let a ``--model package.module:factory`` come from the current directory, as
    ``python -m`` would (generate and tune)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _cmd_generate(args: argparse.Namespace) -> int:
    import_from_cwd()
    result = generate(
        args.model,
        args.out,
        args.num_samples,
        solver=args.solver,
        nfe=args.nfe,
        spacing=args.spacing,
        solver_options=parse_options(args.option, "--option"),
        config=args.config,
        seed=args.seed,
        guidance=args.guidance,
        labels=_labels(args.labels),
        model_options=parse_options(args.model_option, "--model-option"),
        shape=parse_shape(args.shape),
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        threads=args.threads,
        ray=args.ray,
        retries=args.retries,
        progress=not args.no_progress,
    )
    print(
        f"{result.out}: {result.num_samples} samples in {result.shards} shards "
        f"({result.generated} generated, {result.reused} already there) "
        f"in {result.seconds:.1f} s"
    )
    print(f"manifest: {result.manifest}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``generate`` on the ``fewstep`` command's subparsers."""
    g = subparsers.add_parser(
        "generate",
        help="generate many samples into resumable, checksummed shards (in-process or Ray)",
        description="Sample i depends on (--seed, i) only; rerunning the command on the same "
        "--out resumes it, verifying the shards there and making only the missing ones.",
    )
    g.add_argument(
        "--model",
        required=True,
        help="digits-unet (or DIR/digits-unet.json of fewstep train), gmm-vp, a diffusers "
        "pipeline's save_pretrained DIR (samples are its latents) or pkg.mod:factory",
    )
    g.add_argument("--num-samples", type=int, required=True)
    g.add_argument("--out", required=True, help="output directory (manifest.json, shards)")
    g.add_argument("--solver", default="auto")
    g.add_argument("--nfe", type=int, default=None, help="model calls per sample (default 10)")
    g.add_argument("--spacing", default=None, help="spacing name (default: the solver's)")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", help="a solver option")
    g.add_argument("--config", default=None, help="a tuned sampler's JSON (fewstep.tune)")
    g.add_argument("--seed", type=int, default=0, help="base seed of every sample's noise")
    g.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    g.add_argument(
        "--labels", default="auto", help="cycle (i %% classes), a class, none, or auto (default)"
    )
    add_model_arguments(g)
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--shard-size", type=int, default=None, help="default: the dir's, else 2000")
    g.add_argument("--threads", type=int, default=None, help="torch threads (Ray: per task, 1)")
    g.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDRESS",
        help="run shards as Ray tasks: start a local cluster, or join ADDRESS",
    )
    g.add_argument("--retries", type=int, default=3, help="Ray retries of a failed shard")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)
    return g
