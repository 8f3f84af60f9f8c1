"""Where a generation model comes from: a shipped digits model (by name, or the path of the
``NAME.json`` that ``fewstep train`` wrote), an exact reference problem, a diffusers pipeline
saved in a directory or a user's ``package.module:factory``. The driver records its identity
without loading it; any process (the driver, a Ray worker) loads it from that record."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, FewstepError
from ..model import Model

GMM_DEFAULTS = {"dim": 64, "components": 8, "seed": 0}
#: the model options of a saved diffusers pipeline
PIPELINE_OPTIONS = ("mu", "torch_dtype")


def _gmm_names() -> tuple[str, ...]:
    from ..reference.problems import SCHEDULES

    return tuple(sorted(SCHEDULES))


def _digits_names() -> tuple[str, ...]:
    from ..models import available

    return available()


def trained(name: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The digits model name and its ``load`` options, for a name or a trained model's json
    (or safetensors) path: the path's directory becomes the ``directory`` option."""
    path = Path(name)
    if path.suffix not in (".json", ".safetensors") or path.stem not in _digits_names():
        return name, dict(options)
    if "directory" in options:
        raise ArgumentError("model options", "directory is already given by the --model path")
    return path.stem, {**options, "directory": str(path.parent)}


def _saved_pipeline(name: str):
    """The ``SavedPipeline`` of a directory with a model_index.json (diffusers needed)."""
    try:
        from ..integrations.diffusers.saved import SavedPipeline
    except ImportError as err:
        raise ArgumentError(
            "model", f"{name} is a diffusers pipeline: {err}", "pip install fewstep[peers]"
        ) from err
    return SavedPipeline.read(name)


def kind(name: str) -> str:
    """The kind of a ``--model`` value: digits, gmm, diffusers or factory (else
    ``ArgumentError``)."""
    if trained(name, {})[0] in _digits_names():
        return "digits"
    if name in _gmm_names():
        return "gmm"
    if (Path(name) / "model_index.json").is_file():
        return "diffusers"
    module, _, attr = name.partition(":")
    if module and attr:
        return "factory"
    raise ArgumentError(
        "model",
        f"unknown {name!r}",
        f"a shipped model {list(_digits_names())} (or DIR/NAME.json from fewstep train), an "
        f"exact problem {list(_gmm_names())}, a diffusers pipeline's save_pretrained "
        "directory or package.module:factory (a callable returning a fewstep.Model)",
    )


def _factory(name: str) -> Callable[..., Any]:
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ArgumentError(
            "model",
            f"cannot import {name!r}: {err}",
            "make the module importable (on every Ray worker too) and name a callable",
        ) from err
    if not callable(obj):
        raise ArgumentError("model", f"{name!r} is not callable")
    return obj


def identify(
    name: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any], str | None, bool | None]:
    """(options with defaults filled in, sha256 of the weights or None, whether the model is
    class-conditional, None if unknown) for a model value, without loading the model."""
    found = kind(name)
    if found == "digits":
        from ..models.store import read_info

        stem, resolved = trained(name, options)
        return dict(options), read_info(stem, resolved.get("directory"))["sha256"], True
    if found == "gmm":
        unknown = set(options) - set(GMM_DEFAULTS)
        if unknown:
            raise ArgumentError(
                "model options", f"{sorted(unknown)} for {name!r}", f"only {sorted(GMM_DEFAULTS)}"
            )
        return {**GMM_DEFAULTS, **options}, None, False
    if found == "diffusers":
        unknown = set(options) - set(PIPELINE_OPTIONS)
        if unknown:
            raise ArgumentError(
                "model options",
                f"{sorted(unknown)} for a diffusers pipeline",
                f"only {list(PIPELINE_OPTIONS)}",
            )
        saved = _saved_pipeline(name)
        return dict(options), saved.weights_sha256(), saved.num_classes is not None
    _factory(name)
    return dict(options), None, None


def _check_weights(name: str, found: str, expected: str | None) -> None:
    if found != expected:
        raise FewstepError(
            f"{name} here has weights {found}, the run was set up with {expected} (every "
            "worker needs the same model files)"
        )


def load(
    name: str,
    options: Mapping[str, Any],
    guidance: float,
    weights_sha256: str | None,
    shape: Sequence[int] | None,
) -> tuple[Model, tuple[int, ...]]:
    """The model and the shape of one sample. A factory receives the options as keyword
    arguments (and ``guidance_scale`` when it is not 1)."""
    found = kind(name)
    extra = {} if guidance == 1.0 else {"guidance_scale": guidance}
    if found == "digits":
        from ..models import load as load_digits

        stem, resolved = trained(name, options)
        model = load_digits(stem, **extra, **resolved)
        _check_weights(name, model.info["sha256"], weights_sha256)
        return model, tuple(shape or model.image_shape)
    if found == "diffusers":
        saved = _saved_pipeline(name)
        _check_weights(name, saved.weights_sha256(), weights_sha256)
        model = saved.model(**options, **extra)
        return model, tuple(shape or model.image_shape)
    if found == "gmm":
        from ..reference import problem

        pb = problem(name, options["dim"], options["components"], options["seed"])
        return pb.model(**extra), tuple(shape or (options["dim"],))
    model = _factory(name)(**options, **extra)
    if not isinstance(model, Model):
        raise ArgumentError("model", f"{name!r} returned a {type(model).__name__}, not a Model")
    shape = shape or getattr(model, "image_shape", None)
    if shape is None:
        raise ArgumentError(
            "shape",
            f"{name!r} gives no sample shape",
            "pass --shape C,H,W or give the returned model an image_shape attribute",
        )
    return model, tuple(int(s) for s in shape)
