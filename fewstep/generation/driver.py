"""``generate``: the resumable driver. It checks an output directory against the spec, keeps
the shards that verify, plans the missing indices on shard boundaries, runs them in-process
or on Ray, and records each shard in the manifest as it lands."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ArgumentError
from . import manifest, shards
from .ray_backend import ray_shards
from .runner import local_shards
from .spec import DEFAULT_SHARD_SIZE, check_count, make_spec


@dataclass(frozen=True)
class GenerationResult:
    """Where a run wrote, how many of the samples it made or found already there, and the
    seconds it took, of which ``io_seconds`` went to verifying, writing and checksumming
    shards and updating the manifest."""

    out: Path
    manifest: Path
    num_samples: int
    generated: int
    reused: int
    shards: int
    seconds: float
    io_seconds: float
    spec_sha256: str


def missing_ranges(
    num_samples: int, shard_size: int, covered: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The index ranges still to make: each shard-aligned block [k S, (k+1) S) of
    [0, num_samples) minus the ranges already covered."""
    covered = sorted(covered)
    todo = []
    for block in range(0, num_samples, shard_size):
        pos, stop = block, min(block + shard_size, num_samples)
        for a, b in covered:
            if b <= pos or a >= stop:
                continue
            if a > pos:
                todo.append((pos, a))
            pos = max(pos, b)
        if pos < stop:
            todo.append((pos, stop))
    return todo


def _verify(out: Path, doc: dict[str, Any]) -> None:
    """Drop (and delete) recorded shards that fail their checksum; delete the temporary files
    of interrupted writes and shard files the manifest never recorded."""
    kept = []
    for record in doc["shards"]:
        why = shards.problem(out, record)
        if why is None:
            kept.append(record)
            continue
        warnings.warn(
            f"{out}: {why}; regenerating samples {record['start']}..{record['stop'] - 1}",
            stacklevel=3,
        )
        (out / record["file"]).unlink(missing_ok=True)
    doc["shards"] = kept
    temporary, unrecorded = shards.strays(out, {r["file"] for r in kept})
    for file in temporary:
        file.unlink(missing_ok=True)
    for file in unrecorded:
        warnings.warn(f"{file} is not in the manifest (a run stopped first); removed", stacklevel=3)
        file.unlink(missing_ok=True)


#: the keywords ``generate`` passes on to ``make_spec`` (what defines the samples)
SPEC_OPTIONS = frozenset(inspect.signature(make_spec).parameters) - {"model", "shard_size"}


def generate(
    model: str,
    out: str | os.PathLike,
    num_samples: int,
    *,
    batch_size: int = 256,
    shard_size: int | None = None,
    threads: int | None = None,
    ray: bool | str | None = None,
    retries: int = 3,
    progress: bool = True,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    **spec_options: Any,
) -> GenerationResult:
    """Generate samples 0..num_samples-1 of ``model`` into shards under ``out``, resuming
    whatever a previous run of the same configuration left there.

    Sample i's starting noise is row i of ``fewstep.randn((num_samples, *shape), seed)``,
    its solver seed (stochastic solvers) ``derive_seed(seed, i, 1)`` and its label
    ``i % num_classes`` (``labels="cycle"``), so it does not depend on the backend, the
    worker, the order or (beyond float rounding of the model) the batch size.

    Args:
        model: a shipped model ("digits-unet", ...), an exact problem ("gmm-vp", ...; options
            dim, components, seed) or "package.module:factory" returning a ``fewstep.Model``
            (called with ``model_options``, and ``guidance_scale`` when not 1).
        out: the output directory (``manifest.json`` and ``samples-START-STOP.safetensors``).
        num_samples: how many samples the directory should hold; a larger count than a
            previous run's extends it.
        spec_options: what defines the samples, as ``make_spec`` takes them:
        solver, nfe, spacing, solver_options, config: as in ``fewstep.sample`` (a config is
            a ``SamplerConfig`` or its JSON path; adaptive solvers are refused).
        seed: the base seed.
        guidance: classifier-free guidance scale (needs labels).
        labels: "cycle", a fixed class, None, or "auto" ("cycle" for the shipped digits
            models, None otherwise).
        shape: one sample's shape, for factories whose model has no ``image_shape``.
        dtype: "float32" or "float64": the noise, state and stored samples.
        batch_size: samples per model call batch (batches never straddle a shard).
        shard_size: samples per shard file (default: the directory's, else 2000).
        threads: torch threads per process (in-process default: torch's setting; Ray
            default 1 per task). Equal settings give bit-identical samples on both backends.
        ray: None/False to run in-process; True for Ray (the running session, else
            ``ray.init()``); an address string to join that cluster.
        retries: how often Ray retries a shard whose task raised or whose worker died.
        progress: show a progress bar over completed samples.
        on_shard: called with each shard's manifest record once it is recorded.
    """
    unknown = sorted(set(spec_options) - SPEC_OPTIONS)
    if unknown:
        raise ArgumentError(
            "generate options", f"unknown {unknown}", f"one of {sorted(SPEC_OPTIONS)}"
        )
    out = Path(out)
    num_samples = check_count("num_samples", num_samples)
    batch_size = check_count("batch_size", batch_size)
    retries = check_count("retries", retries, 0)
    if threads is not None:
        threads = check_count("threads", threads)
    start = time.perf_counter()
    created = not out.exists()
    with manifest.lock(out):
        try:
            doc = manifest.read(out) if manifest.path(out).exists() else None
            if shard_size is None:
                shard_size = DEFAULT_SHARD_SIZE if doc is None else doc["spec"]["shard_size"]
            spec = make_spec(model, shard_size=shard_size, **spec_options)
            if doc is not None and doc["shards"]:
                manifest.check(doc, spec, out)
            else:  # a new directory, or one whose first run recorded no shard
                doc = manifest.new(spec, num_samples)
            io_start = time.perf_counter()
            _verify(out, doc)
            doc["num_samples"] = max(doc["num_samples"], num_samples)
            manifest.write(out, doc)
            io_seconds = time.perf_counter() - io_start
            todo = missing_ranges(
                num_samples, spec.shard_size, [(r["start"], r["stop"]) for r in doc["shards"]]
            )
            pending = sum(b - a for a, b in todo)
            with tqdm(
                total=num_samples,
                initial=num_samples - pending,
                unit="sample",
                desc="generate",
                disable=not progress,
            ) as bar:
                options = {"batch_size": batch_size, "threads": threads, "advance": bar.update}
                if ray:
                    source = ray_shards(spec, todo, address=ray, retries=retries, **options)
                else:
                    source = local_shards(spec, todo, **options)
                with contextlib.closing(source):
                    for batch in source:
                        io_start = time.perf_counter()
                        record = shards.write(out, batch, doc["spec_sha256"])
                        doc["shards"].append(record)
                        manifest.write(out, doc)
                        io_seconds += time.perf_counter() - io_start
                        if on_shard is not None:
                            on_shard(record)
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [".lock"]:
                shutil.rmtree(out)  # a run that failed before writing leaves no directory
            raise
    return GenerationResult(
        out=out,
        manifest=manifest.path(out),
        num_samples=num_samples,
        generated=pending,
        reused=num_samples - pending,
        shards=len(doc["shards"]),
        seconds=time.perf_counter() - start,
        io_seconds=io_seconds,
        spec_sha256=doc["spec_sha256"],
    )
