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
    from .demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"report: {report}")
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
    p.set_defaults(func=_cmd_sample)

    d = sub.add_parser("demo", help="the main job: solvers against NFE, with a report")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--quick", action="store_true", help="a small run (for tests)")
    d.set_defaults(func=_cmd_demo)
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
