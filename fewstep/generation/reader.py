"""Reading an output directory back: its shards in index order, each verified against the
manifest's checksum before use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from . import manifest, shards
from .runner import Batch


def iter_shards(out: str | os.PathLike, *, verify: bool = True) -> Iterator[Batch]:
    """The recorded shards of ``out`` in index order, as (indices, samples, labels)."""
    yield from _shards(out, manifest.read(out), verify)


def _shards(out: str | os.PathLike, doc: dict, verify: bool) -> Iterator[Batch]:
    for record in sorted(doc["shards"], key=lambda r: r["start"]):
        yield shards.read(Path(out), record, verify)


def load_samples(out: str | os.PathLike, *, verify: bool = True, complete: bool = True) -> Batch:
    """All samples of ``out`` in index order; with ``complete``, a ``ShardError`` unless the
    directory holds every index below its sample count."""
    doc = manifest.read(out)
    have = sum(r["count"] for r in doc["shards"])
    if (complete and have < doc["num_samples"]) or not have:
        raise shards.ShardError(
            f"{out} holds {have} of {doc['num_samples']} samples "
            "(rerun the same generate command to finish it)"
        )
    parts = list(_shards(out, doc, verify))  # the shards of the manifest just checked
    labels = None if parts[0].labels is None else torch.cat([p.labels for p in parts])
    return Batch(
        torch.cat([p.indices for p in parts]), torch.cat([p.samples for p in parts]), labels
    )
