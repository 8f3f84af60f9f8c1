"""Large-scale generation: sharded, resumable, in-process or on Ray.

``generate`` writes samples 0..n-1 of a model into checksummed shards with a manifest and
resumes an interrupted run; sample i depends on (seed, i) only. ``sample_indices`` is the
in-process core every large sampling job shares; ``load_samples`` reads a directory back.
"""

from .driver import GenerationResult, generate, missing_ranges
from .reader import iter_shards, load_samples
from .runner import Batch, index_labels, index_noise, sample_batched, sample_indices, solver_seeds
from .shards import ShardError
from .spec import GenerationSpec, Sampler, make_spec

__all__ = [
    "Batch",
    "GenerationResult",
    "GenerationSpec",
    "Sampler",
    "ShardError",
    "generate",
    "index_labels",
    "index_noise",
    "iter_shards",
    "load_samples",
    "make_spec",
    "missing_ranges",
    "sample_batched",
    "sample_indices",
    "solver_seeds",
]
