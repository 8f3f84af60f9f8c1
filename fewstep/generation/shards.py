"""Shard files: ``samples-START-STOP.safetensors`` holds samples START..STOP-1 with their
indices and labels. A shard is written to a temporary file and renamed into place, and only
counts once the manifest records its sha256: a partial shard is never a complete one."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import FewstepError
from ..io import atomic_write_bytes
from .runner import Batch

SHARD = re.compile(r"samples-(\d{9})-(\d{9})\.safetensors")
# the temporary files fewstep.io.atomic_write leaves when a process dies mid-write
TEMPORARY = re.compile(r"\.(samples-\d{9}-\d{9}\.safetensors|manifest\.json)\..+\.tmp")


class ShardError(FewstepError, RuntimeError):
    """A shard is missing, damaged, or does not hold what the manifest says."""


def name(start: int, stop: int) -> str:
    """The file of samples start..stop-1."""
    return f"samples-{start:09d}-{stop:09d}.safetensors"


def encode(batch: Batch, spec_sha256: str) -> bytes:
    """The shard's bytes: a function of the tensors and the spec alone (one metadata entry of
    sorted JSON, so equal samples give equal files and checksums)."""
    start, stop = int(batch.indices[0]), int(batch.indices[-1]) + 1
    if batch.indices.tolist() != list(range(start, stop)):
        raise FewstepError("internal: a shard must hold consecutive indices")
    tensors = {"indices": batch.indices.contiguous(), "samples": batch.samples.contiguous()}
    if batch.labels is not None:
        tensors["labels"] = batch.labels.contiguous()
    meta = json.dumps({"spec_sha256": spec_sha256, "start": start, "stop": stop}, sort_keys=True)
    return save_safetensors(tensors, metadata={"fewstep": meta})


def write(out: Path, batch: Batch, spec_sha256: str) -> dict[str, Any]:
    """Write a shard atomically; returns its manifest record."""
    data = encode(batch, spec_sha256)
    start, stop = int(batch.indices[0]), int(batch.indices[-1]) + 1
    atomic_write_bytes(out / name(start, stop), data)
    return {
        "file": name(start, stop),
        "start": start,
        "stop": stop,
        "count": stop - start,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _mismatch(record: dict[str, Any], data: bytes) -> bool:
    return len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]


def problem(out: Path, record: dict[str, Any]) -> str | None:
    """Why the shard of ``record`` cannot be used (missing, wrong size or checksum), or None."""
    path = out / record["file"]
    if not path.is_file():
        return f"{record['file']} is missing"
    if _mismatch(record, path.read_bytes()):
        return f"{record['file']} does not match its checksum"
    return None


def read(out: Path, record: dict[str, Any], verify: bool = True) -> Batch:
    """The samples of a recorded shard (checked against its checksum unless ``verify`` is off)."""
    path, rerun = out / record["file"], "rerun the same generate command to regenerate it"
    if not path.is_file():
        raise ShardError(f"{out}: {record['file']} is missing ({rerun})")
    data = path.read_bytes()
    if verify and _mismatch(record, data):
        raise ShardError(f"{out}: {record['file']} does not match its checksum ({rerun})")
    tensors = load_safetensors(data)
    return Batch(tensors["indices"], tensors["samples"], tensors.get("labels"))


def strays(out: Path, recorded: set[str]) -> tuple[list[Path], list[Path]]:
    """(temporary files of interrupted writes, shard files the manifest does not record)."""
    temporary = [p for p in out.iterdir() if TEMPORARY.fullmatch(p.name)]
    unrecorded = [p for p in out.iterdir() if SHARD.fullmatch(p.name) and p.name not in recorded]
    return temporary, unrecorded
