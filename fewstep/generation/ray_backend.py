"""The Ray backend: each missing shard is a Ray task, retried when it raises or its worker
process dies; a worker process loads the model once and keeps it for the tasks it runs.
Workers return samples, the driver writes them (the manifest keeps one writer). fewstep's
own errors (bad input, a non-finite model output) are the same on every retry: a task
returns them instead of raising, and the driver raises them at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArgumentError, FewstepError
from ..model import Model
from .runner import Batch, sample_shard
from .spec import GenerationSpec

_LOADED: dict[str, tuple[Model, tuple[int, ...]]] = {}  # per worker process: spec sha256 -> model


def import_ray() -> Any:
    """The ``ray`` module, or an ``ArgumentError`` naming the extra to install."""
    try:
        import ray
    except ImportError as err:
        raise ArgumentError(
            "ray", "the Ray backend needs the ray package", "pip install fewstep[ray]"
        ) from err
    return ray


@dataclass
class _Deterministic:
    """A shard's fewstep error, returned rather than raised so that Ray does not retry it."""

    error: FewstepError


def _shard_task(
    record: dict[str, Any], start: int, stop: int, batch_size: int, threads: int
) -> Batch | _Deterministic:
    spec = GenerationSpec.from_record(record)
    key = spec.sha256()
    try:
        if key not in _LOADED:
            _LOADED.clear()  # one model per worker process
            _LOADED[key] = spec.load_model()
        torch.set_num_threads(threads)
        return sample_shard(spec, _LOADED[key], start, stop, batch_size)
    except FewstepError as err:
        return _Deterministic(err)


def ray_shards(
    spec: GenerationSpec,
    ranges: Sequence[tuple[int, int]],
    *,
    address: bool | str,
    batch_size: int,
    threads: int | None,
    retries: int,
    advance: Callable[[int], None],
) -> Iterator[Batch]:
    """Run the ranges as Ray tasks of ``threads`` CPUs each (default 1) and yield their
    samples as they complete. Uses the running Ray session if there is one; otherwise
    ``ray.init()`` (a new local cluster, or the one RAY_ADDRESS names) or
    ``ray.init(address)``, shut down again at the end."""
    if not ranges:
        return
    ray = import_ray()
    threads = 1 if threads is None else threads
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address is True else address)
    try:
        task = ray.remote(_shard_task).options(
            num_cpus=threads, max_retries=retries, retry_exceptions=True
        )
        record = spec.record()
        pending = [task.remote(record, a, b, batch_size, threads) for a, b in ranges]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                batch = ray.get(done[0])
                if isinstance(batch, _Deterministic):
                    raise batch.error
                advance(len(batch.indices))
                yield batch
        finally:
            for ref in pending:
                ray.cancel(ref)
    finally:
        if started:
            ray.shutdown()
