"""The ``fewstep`` command line."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import FewstepError


def _cmd_sample(args: argparse.Namespace) -> int:
    from .reference import problem, rmse
    from .sampling import sample

    pb = problem(args.problem, dim=args.dim, components=args.components, seed=args.problem_seed)
    noise = pb.noise(args.num_samples, seed=args.seed)
    model = pb.model()
    start = time.perf_counter()
    if args.config is not None:
        from .tuner import SamplerConfig

        config = SamplerConfig.load(args.config)
        args.solver, args.nfe, args.spacing = f"{config.solver} (tuned)", config.nfe, "tuned"
        x = sample(model, noise, config=config)
    else:
        x = sample(model, noise, solver=args.solver, nfe=args.nfe, spacing=args.spacing)
    elapsed = time.perf_counter() - start
    err = rmse(x, pb.reference(noise))
    print(
        f"problem   {pb.name}  (dim {pb.gmm.dim}, {pb.gmm.n_components} components, "
        f"{pb.schedule!r}, {pb.prediction} prediction)"
    )
    print(f"solver    {args.solver}  spacing {args.spacing or pb.schedule.default_spacing}")
    print(f"nfe       {model.nfe} model calls (asked {args.nfe})")
    print(
        f"rmse      mean {err.mean():.4e}  median {err.median():.4e}  "
        f"vs the exact ODE solution, {args.num_samples} samples"
    )
    print(f"time      {elapsed:.3f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .demo import QUICK, DemoConfig, run_demo

    config = QUICK if args.quick else DemoConfig()
    if args.samples is not None:
        config = replace(config, samples=args.samples)
    if args.guidance is not None:
        config = replace(config, guidance=args.guidance)
    report = run_demo(args.out, config=config)
    print(f"report: {report} (and {report.with_suffix('.md').name} beside it)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .models.train import train

    info = train(args.name, args.out, seed=args.seed, steps=args.steps, minutes=args.minutes)
    print(f"weights: {info.with_suffix('.safetensors')}")
    print(f"record:  {info}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample an exact-reference problem and print the error")
    p.add_argument("--problem", default="gmm-vp", help="gmm-vp, gmm-flow or gmm-edm")
    p.add_argument("--solver", default="ddim")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--spacing", default=None, help="spacing name (default: the schedule's)")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--problem-seed", type=int, default=0, help="seed of the mixture itself")
    p.add_argument("--config", default=None, help="a tuned sampler's JSON (fewstep tune)")
    p.set_defaults(func=_cmd_sample)

    d = sub.add_parser(
        "demo", help="the main job: solvers against NFE on the shipped digits models, a report"
    )
    d.add_argument("--out", default="out/demo")
    d.add_argument("--quick", action="store_true", help="a small run (for tests)")
    d.add_argument("--samples", type=int, default=None, help="samples per model (x10)")
    d.add_argument("--guidance", type=float, default=None, help="guidance scale of the sweep")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a shipped digits model from its recipe")
    t.add_argument("name", help="digits-unet, digits-dit, digits-flow or digits-classifier")
    t.add_argument("--out", default="out/models", help="directory of the weights and json")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    t.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    t.set_defaults(func=_cmd_train)

    from .generation.cli import add_parser as add_generate
    from .tuner.cli import add_parser as add_tune

    add_generate(sub)
    add_tune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FewstepError as err:
        print(f"fewstep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
