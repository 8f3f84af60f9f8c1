"""Generation throughput on the shipped digits-unet: in-process against Ray with 2 local
workers, and what the shards, checksums and manifest cost.

    python bench/generate.py                  # 2000 samples, nfe 8, the default solver
    python bench/generate.py --samples 200    # a smoke run

In one run, with the same spec (shards of 500, batches of 250, labels i % 10), every
process with one torch thread (on a shared 2-core machine, two threads in one process
oversubscribe the cores and run many times slower):

- a plain ``fewstep.sample`` loop over the same batches and noises: the baseline;
- ``fewstep.generate`` in-process; its ``io_seconds`` (verifying, writing and checksumming
  shards, updating the manifest) over its ``seconds`` is the sharding + checksum overhead;
- ``fewstep.generate(ray=True)`` on a local Ray cluster of 2 CPUs (2 workers of 1 thread):
  "cold" includes starting the workers and loading the model in each, "warm" reuses them;
- rerunning the finished in-process command: the resume check (every checksum verified).

Each figure but the cold start is the best of ``--repeat`` runs (plain and in-process
interleaved).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import fewstep
from fewstep.generation import GenerationResult, generate, load_samples
from fewstep.models import load

MODEL = "digits-unet"


def plain_loop(samples: int, nfe: int, batch: int) -> tuple[float, torch.Tensor]:
    """The baseline: one batched noise draw, then fewstep.sample batch by batch."""
    start = time.perf_counter()
    model = load(MODEL)
    noise = fewstep.randn((samples, *model.image_shape), seed=0)
    labels = torch.arange(samples) % model.num_classes
    out = [
        fewstep.sample(model, noise[a : a + batch], nfe=nfe, cond={"y": labels[a : a + batch]})
        for a in range(0, samples, batch)
    ]
    return time.perf_counter() - start, torch.cat(out)


def fresh(out: Path, samples: int, **options) -> GenerationResult:
    """``generate`` into an emptied directory."""
    shutil.rmtree(out, ignore_errors=True)
    return generate(MODEL, out, samples, progress=False, threads=1, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.samples, range(args.repeat)
    spec = {"nfe": args.nfe, "shard_size": args.shard_size, "batch_size": args.batch_size}
    if args.shard_size % args.batch_size:
        parser.error("--shard-size must be a multiple of --batch-size (the same batches)")
    work = Path(tempfile.mkdtemp(prefix="fewstep-bench-generate-"))
    try:
        torch.set_num_threads(1)
        plains, locals_ = [], []
        for _ in repeat:  # interleaved, so drifts in the machine's load hit both alike
            plains.append(plain_loop(n, args.nfe, args.batch_size))
            locals_.append(fresh(work / "local", n, **spec))
        plain, reference = min(plains, key=lambda r: r[0])
        local = min(locals_, key=lambda r: r.seconds)
        resume = min(
            generate(MODEL, work / "local", n, progress=False, threads=1, **spec).seconds
            for _ in repeat
        )
        same = torch.equal(load_samples(work / "local").samples, reference)

        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        cold = fresh(work / "ray", n, ray=True, **spec).seconds
        warm = min(fresh(work / "ray", n, ray=True, **spec).seconds for _ in repeat)
        ray.shutdown()
        bitwise = torch.equal(
            load_samples(work / "ray").samples, load_samples(work / "local").samples
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"$ python bench/generate.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"{MODEL}, {n} samples, nfe {args.nfe}, solver auto, shards of {args.shard_size}, "
        f"batches of {args.batch_size}, torch {torch.__version__}, 1 thread per process\n"
    )
    print("| run | seconds | samples/s |")
    print("|---|---:|---:|")
    rows = [
        ("plain `fewstep.sample` loop, 1 process", plain),
        ("`generate` in-process, 1 process", local.seconds),
        ("`generate` on Ray, 2 workers (cold: workers start, load the model)", cold),
        ("`generate` on Ray, 2 workers (warm)", warm),
    ]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} |")
    print(f"| resume check of the finished directory (all checksums) | {resume:.3f} | |")
    print(
        f"\nsharding + checksums + manifest, in one in-process run: {local.io_seconds:.3f} s "
        f"of {local.seconds:.2f} s = {local.io_seconds / local.seconds:.4f}"
    )
    print(f"in-process generate / plain loop time: {local.seconds / plain:.3f}")
    print(f"Ray (warm) throughput / in-process: {local.seconds / warm:.2f}x")
    print(f"generate == plain loop samples: {same}; Ray == in-process bit for bit: {bitwise}")


if __name__ == "__main__":
    main()
