"""The sampling loop of the large jobs (``fewstep generate``, the tuner's teacher): samples
for a list of indices, sample i determined by (seed, i) alone, in batches whose composition
never changes a sample's noise."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..guidance import class_inputs
from ..model import Model
from ..noise import derive_seed, randn
from ..sampling import StepInfo, sample
from .spec import GenerationSpec, Labels, Sampler, check_count

#: how sample i's randomness derives from the base seed (recorded in the manifest)
SEEDING = {
    "noise": "derive_seed(seed, i): row i of fewstep.randn((n, *shape), seed)",
    "solver": "derive_seed(seed, i, 1): the stochastic solver's seed of sample i",
}


class Batch(NamedTuple):
    """Samples with their indices and labels (None for an unconditional model)."""

    indices: Tensor
    samples: Tensor
    labels: Tensor | None


def index_noise(
    shape: Sequence[int], indices: Sequence[int], seed: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The starting noise of the given samples: equal to ``fewstep.randn((n, *shape), seed)``
    at those rows, whatever the list they come in."""
    seeds = [derive_seed(seed, int(i)) for i in indices]
    return randn((len(seeds), *shape), seeds, dtype=dtype)


def solver_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """Per-sample seeds of a stochastic solver, a stream separate from the starting noise."""
    return [derive_seed(seed, int(i), 1) for i in indices]


def index_labels(rule: Labels, indices: Sequence[int], model: Model) -> Tensor | None:
    """Sample i's class: i % num_classes ("cycle"), a fixed class, or None."""
    if rule is None:
        return None
    index = torch.as_tensor(list(indices), dtype=torch.int64)
    if rule == "cycle":
        classes = getattr(model, "num_classes", None)
        if classes is None:
            raise ArgumentError(
                "labels", "'cycle' needs a model with a num_classes attribute", "pass a class"
            )
        return index % int(classes)
    return torch.full_like(index, int(rule))


def _rows(value: Any, a: int, b: int) -> Any:
    return value[a:b] if isinstance(value, Tensor) and value.ndim else value


def sample_batched(
    model: Model,
    noise: Tensor,
    sampler: Sampler,
    *,
    seeds: Sequence[int] | None = None,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    callback: Callable[[slice, StepInfo], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """``fewstep.sample`` over consecutive batches of ``noise`` (and of the batched ``cond``,
    ``uncond`` and per-sample ``seeds``). ``callback(rows, info)`` sees every step of the
    batch that holds those rows of ``noise``; ``on_batch(n)`` is called after each batch of n."""
    n = noise.shape[0]
    size = n if batch_size is None else check_count("batch_size", batch_size)
    parts = []
    for a in range(0, n, size):
        b = min(a + size, n)
        rows = slice(a, b)
        parts.append(
            sample(
                model,
                noise[rows],
                seed=None if seeds is None else list(seeds[rows]),
                cond=None if cond is None else {k: _rows(v, a, b) for k, v in cond.items()},
                uncond=None if uncond is None else {k: _rows(v, a, b) for k, v in uncond.items()},
                callback=None if callback is None else partial(callback, rows),
                **sampler.kwargs(),
            )
        )
        if on_batch is not None:
            on_batch(b - a)
    return torch.cat(parts)


def sample_indices(
    model: Model,
    indices: Sequence[int],
    sampler: Sampler,
    *,
    seed: int,
    shape: Sequence[int],
    labels: Labels = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    on_batch: Callable[[int], None] | None = None,
) -> Batch:
    """The samples of ``indices``: starting noise ``index_noise``, solver seeds
    ``solver_seeds`` (stochastic solvers only), labels ``index_labels`` with the model's
    ``null_class`` as the unconditional input; batches of ``batch_size`` in list order."""
    index = [int(i) for i in indices]
    if not index or min(index) < 0:
        raise ArgumentError("indices", "need at least one index, all non-negative")
    y = index_labels(labels, index, model)
    cond, uncond = (None, None) if y is None else class_inputs(model, y)
    samples = sample_batched(
        model,
        index_noise(shape, index, seed, dtype),
        sampler,
        seeds=solver_seeds(seed, index) if sampler.stochastic(model) else None,
        cond=cond,
        uncond=uncond,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    return Batch(torch.tensor(index, dtype=torch.int64), samples, y)


def sample_shard(
    spec: GenerationSpec,
    loaded: tuple[Model, tuple[int, ...]],
    start: int,
    stop: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> Batch:
    """Samples start..stop-1 of a spec (the unit of work of every backend)."""
    model, shape = loaded
    return sample_indices(
        model,
        range(start, stop),
        spec.sampler(),
        seed=spec.seed,
        shape=shape,
        labels=spec.labels,
        batch_size=batch_size,
        dtype=spec.torch_dtype,
        on_batch=on_batch,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: leave torch's setting), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def local_shards(
    spec: GenerationSpec,
    ranges: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    threads: int | None,
    advance: Callable[[int], None],
) -> Iterator[Batch]:
    """The in-process backend: one model, loaded once, each range in turn."""
    if not ranges:
        return
    with torch_threads(threads):
        loaded = spec.load_model()
        for start, stop in ranges:
            yield sample_shard(spec, loaded, start, stop, batch_size, advance)
