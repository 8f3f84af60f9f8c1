"""Shipped weights on disk: ``NAME.safetensors`` beside ``NAME.json`` (recipe, sha256
checksum, training record, held-out metrics and a recorded output on a fixed input).
Both are written atomically; reading verifies the checksum before anything is loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from ..errors import FewstepError
from ..io import atomic_write_bytes, atomic_write_text
from ..noise import randn
from .data import IMAGE_SHAPE, load_digits

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsError(FewstepError, RuntimeError):
    """Shipped weights are missing, or do not match their recorded checksum."""


def paths(name: str, directory: str | Path | None = None) -> tuple[Path, Path]:
    """(weights file, json file) of ``name`` in ``directory`` (default: the package's)."""
    base = WEIGHTS_DIR if directory is None else Path(directory)
    return base / f"{name}.safetensors", base / f"{name}.json"


def save(name: str, state: dict[str, Tensor], info: dict[str, Any], directory: str | Path) -> Path:
    """Write the weights and their json (with the sha256 of the weights file); returns the
    json's path. The bytes depend only on the tensors, so equal weights give equal sums."""
    data = save_safetensors({k: v.detach().contiguous() for k, v in state.items()})
    weights_path, info_path = paths(name, directory)
    atomic_write_bytes(weights_path, data)
    info = {**info, "file": weights_path.name, "bytes": len(data)}
    info["sha256"] = hashlib.sha256(data).hexdigest()
    return atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")


def read_info(name: str, directory: str | Path | None = None) -> dict[str, Any]:
    """The json record of ``name``."""
    _, info_path = paths(name, directory)
    if not info_path.exists():
        raise WeightsError(
            f"no weights for {name!r} in {info_path.parent} "
            f"(make them with `fewstep train {name} --out {info_path.parent}`)"
        )
    return json.loads(info_path.read_text(encoding="utf-8"))


def read(name: str, directory: str | Path | None = None) -> tuple[dict[str, Tensor], dict]:
    """The state dict and json record of ``name``, after checking the weights' sha256."""
    info = read_info(name, directory)
    weights_path, _ = paths(name, directory)
    data = weights_path.read_bytes() if weights_path.exists() else b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise WeightsError(
            f"{weights_path} has sha256 {digest}, its json records {info['sha256']} "
            f"(the file is damaged or stale: retrain with `fewstep train {name}`)"
        )
    return load_safetensors(data), info


def check_input(schedule: str | None) -> dict[str, Tensor]:
    """The fixed input whose output each json records: seeded noise, one time per sample
    spread over the schedule (pure noise to data) and labels 0, 3, 7 and the null class;
    for the classifier, the first 8 held-out digits."""
    if schedule is None:
        return {"x": load_digits("test").images[:8]}
    times = [999.0, 500.0, 100.0, 0.0] if schedule != "flow" else [1.0, 0.5, 0.1, 0.001]
    return {
        "x": randn((4, *IMAGE_SHAPE), seed=2024),
        "t": torch.tensor(times),
        "y": torch.tensor([0, 3, 7, 10]),
    }


@torch.no_grad()
def fingerprint(network: nn.Module, schedule: str | None) -> dict[str, Any]:
    """The network's output on ``check_input``: its first 16 values, mean and RMS."""
    out = network(**check_input(schedule)).double().flatten()
    return {
        "head": [round(v, 7) for v in out[:16].tolist()],
        "mean": out.mean().item(),
        "rms": out.pow(2).mean().sqrt().item(),
    }
