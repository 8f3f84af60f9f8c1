"""``manifest.json``: the spec of an output directory, its sample count and the shards it
holds (index ranges, sizes, sha256). It has one writer, replaces itself atomically after
every shard, and decides whether a rerun may resume into the directory."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from ..io import atomic_write_text
from .runner import SEEDING
from .spec import GenerationSpec, digest

FORMAT = "fewstep-generation/1"
NAME = "manifest.json"


def path(out: str | os.PathLike) -> Path:
    """The manifest file of ``out``."""
    return Path(out) / NAME


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of ``out``; ``ArgumentError`` when there is none or it is not ours."""
    file = path(out)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ArgumentError(
            "out", f"{out} has no {NAME}", "generate into it first (fewstep generate)"
        ) from err
    except (OSError, json.JSONDecodeError) as err:
        raise ArgumentError("out", f"cannot read {file}: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArgumentError("out", f"{file} is not a {FORMAT} manifest", "use another --out")
    return doc


def new(spec: GenerationSpec, num_samples: int) -> dict[str, Any]:
    """A manifest for ``spec`` with no shards yet."""
    from .. import __version__

    record = spec.record()
    return {
        "format": FORMAT,
        "fewstep_version": __version__,
        "spec": record,
        "spec_sha256": digest(record),
        "config_sha256": None if spec.config is None else digest(spec.config),
        "seeds": {"base": spec.seed, **SEEDING},
        "num_samples": num_samples,
        "shards": [],
        "created": _now(),
        "updated": _now(),
    }


def check(doc: dict[str, Any], spec: GenerationSpec, out: str | os.PathLike) -> None:
    """Raise ``ArgumentError`` naming what differs when ``out`` holds another configuration."""
    record = spec.record()
    if doc["spec_sha256"] == digest(record) and doc["spec"] == record:
        return
    keys = sorted(set(record) | set(doc["spec"]))
    differ = [
        f"{k}: {doc['spec'].get(k)!r} there, {record.get(k)!r} now"
        for k in keys
        if doc["spec"].get(k) != record.get(k)
    ]
    raise ArgumentError(
        "out",
        f"{out} holds samples of another configuration ({'; '.join(differ) or 'spec hash'})",
        "use another --out, or rerun with the directory's original options",
    )


def write(out: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Replace the manifest atomically (shards sorted by index, ``updated`` stamped)."""
    from .. import __version__

    doc["shards"].sort(key=lambda s: s["start"])
    doc["fewstep_version"] = __version__
    doc["updated"] = _now()
    atomic_write_text(path(out), json.dumps(doc, indent=1) + "\n")


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` so two runs never write one directory (POSIX advisory lock)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ArgumentError(
                "out",
                f"{out} is being written by another generate run",
                "wait for it to finish, or use another --out",
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
