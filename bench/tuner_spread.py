"""The tuner's run-to-run spread on an exact mixture: the same calibration noises and targets
as ``bench/tuner.py``'s mixtures section, in other row orders. The row order decides which
noises a descent holds out (every fourth) and which each of its minibatches draws (order 0
with ``--draws 3``, tune's default, is the bench's own run), so the spread is how far a
tuning's held-out result moves with nothing but those choices (float rounding on another
machine moves it as far).

    python bench/tuner_spread.py --problem gmm-vp --nfe 6 5 --orders 4
    python bench/tuner_spread.py --problem gmm-vp --nfe 6 5 --orders 4 --draws 3

Prints and writes bench/results/tuner_spread{_drawsK}.md and .json: per tuning, the held-out
mean and median RMSE (8192 noises), the held-out samples that end at another mode than the
exact solution's, and the calibration loss the tuner kept (RMSE on all calibration noises).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tuner import REFERENCES, _wrong_modes

import fewstep
from fewstep.io import atomic_write_text
from fewstep.reference import problem, rmse
from fewstep.tuner.tune import DRAWS

torch.set_num_threads(2)


def row_order(count: int, k: int) -> torch.Tensor:
    """Order k of the calibration rows: 0 as given, else a seeded permutation."""
    if k == 0:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gmm-vp")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--orders", type=int, default=4, help="row orders, the given one first")
    parser.add_argument(
        "--draws", type=int, default=1, help=f"fewstep.tune's draws (its default: {DRAWS})"
    )
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--calibration", type=int, default=4096)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    pb = problem(args.problem, cache_dir=REFERENCES)
    model = pb.model()
    noise, cal = pb.noise(args.samples, seed=0), pb.noise(args.calibration, seed=11)
    ref, ref_cal = pb.reference(noise), pb.reference(cal)
    rows = []
    for n in args.nfe:
        for k in range(args.orders):
            order = row_order(args.calibration, k)
            start = time.perf_counter()
            config = fewstep.tune(
                model,
                n,
                calibration=cal[order],
                target=ref_cal[order],
                draws=args.draws,
                progress=False,
            )
            seconds = time.perf_counter() - start
            x = fewstep.sample(model, noise, config=config)
            errors = rmse(x, ref)
            rows.append(
                dict(
                    nfe=n,
                    order=k,
                    mean=float(errors.mean()),
                    median=float(errors.median()),
                    modes=_wrong_modes(x, ref, pb.gmm),
                    calibration_loss=config.meta["calibration_rmse"],
                    sampler=f"{config.solver} {config.options.get('orders')}, "
                    f"{config.meta['first_step']} first step",
                    seconds=seconds,
                )
            )
            r = rows[-1]
            print(
                f"[{pb.name}] NFE {n} order {k}: held-out mean {r['mean']:.3e} median "
                f"{r['median']:.3e} [{r['modes']} modes], calibration loss "
                f"{r['calibration_loss']:.3e} ({seconds:.0f} s)",
                flush=True,
            )
    command = "python bench/tuner_spread.py " + " ".join(sys.argv[1:])
    md = io.StringIO()
    md.write(f"# Tuner spread over minibatch draws\n\n`{command}`: {pb.name}, ")
    draws = "" if args.draws == 1 else f", draws={args.draws}"
    md.write(f"{args.calibration} calibration noises, {args.samples} held-out{draws}.\n\n")
    md.write("| NFE | row order | held-out mean | median | other mode | calibration loss |\n")
    md.write("|---|---|---|---|---|---|\n")
    for r in rows:
        md.write(
            f"| {r['nfe']} | {r['order']} | {r['mean']:.2e} | {r['median']:.2e} | "
            f"{r['modes']} | {r['calibration_loss']:.2e} |\n"
        )
    out = Path(args.out)
    stem = "tuner_spread" if args.draws == 1 else f"tuner_spread_draws{args.draws}"
    atomic_write_text(out / f"{stem}.md", md.getvalue())
    atomic_write_text(out / f"{stem}.json", json.dumps(dict(command=command, rows=rows)))
    print(md.getvalue())


if __name__ == "__main__":
    main()
