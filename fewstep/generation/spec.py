"""What a generation run produces, as one canonical JSON record: the model (and its weights'
checksum), the sampler, the base seed, the label rule, the dtype and the shard size. Its
sha256 names the configuration: equal records give the same sample i."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..errors import ArgumentError
from ..model import Model
from ..sampling import DEFAULT_NFE, resolve
from ..solvers import get_solver
from . import sources

FORMAT = "fewstep-generation-spec/1"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_SHARD_SIZE = 2000

#: sample i's label: "cycle" (i % num_classes), a fixed class, or None (unconditional)
Labels = str | int | None


def canonical(record: Any) -> str:
    """The JSON text hashes are taken of: sorted keys, no spaces."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def digest(record: Any) -> str:
    """The sha256 of ``canonical(record)``."""
    return hashlib.sha256(canonical(record).encode()).hexdigest()


@dataclass(frozen=True)
class Sampler:
    """How each sample is integrated: the arguments of ``fewstep.sample`` besides its inputs
    (a ``SamplerConfig`` in ``config`` replaces solver, nfe, spacing and options)."""

    solver: str = "auto"
    nfe: int | None = None
    spacing: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    config: Any = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``fewstep.sample``."""
        if self.config is not None:
            return {"config": self.config}
        return {"solver": self.solver, "nfe": self.nfe, "spacing": self.spacing, **self.options}

    def stochastic(self, model: Model) -> bool:
        """Whether the solver draws noise (then each sample needs its own solver seed)."""
        if self.config is not None:
            return get_solver(self.config.solver, **self.config.options).stochastic
        nfe = DEFAULT_NFE if self.nfe is None else self.nfe
        return resolve(model, self.solver, self.spacing, nfe, **self.options)[0].stochastic


def _config_record(config: Any) -> dict[str, Any]:
    from ..tuner.config import SamplerConfig

    loaded = config if isinstance(config, SamplerConfig) else SamplerConfig.load(config)
    return loaded.record()


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides the samples of a run (batch size, threads and backend do not,
    beyond float rounding of the model's arithmetic)."""

    model: str
    model_options: dict[str, Any]
    weights_sha256: str | None
    guidance: float
    labels: Labels
    shape: list[int] | None
    solver: str
    nfe: int
    spacing: str | list[float] | None
    solver_options: dict[str, Any]
    config: dict[str, Any] | None
    seed: int
    dtype: str
    shard_size: int

    def record(self) -> dict[str, Any]:
        """The JSON record (what the manifest stores and workers receive)."""
        return {"format": FORMAT, **json.loads(json.dumps(asdict(self)))}

    def sha256(self) -> str:
        """The configuration's name: the sha256 of its record."""
        return digest(self.record())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GenerationSpec:
        """The spec of a ``record()``."""
        if record.get("format") != FORMAT:
            raise ArgumentError("spec", f"not a {FORMAT} record (format {record.get('format')!r})")
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def sampler(self) -> Sampler:
        """How each sample is integrated."""
        if self.config is not None:
            from ..tuner.config import SamplerConfig

            return Sampler(config=SamplerConfig.from_record(self.config))
        return Sampler(self.solver, self.nfe, self.spacing, dict(self.solver_options))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the noise, the state and the stored samples."""
        return DTYPES[self.dtype]

    def load_model(self) -> tuple[Model, tuple[int, ...]]:
        """The model and one sample's shape (in whichever process runs this)."""
        return sources.load(
            self.model,
            self.model_options,
            self.guidance,
            self.weights_sha256,
            None if self.shape is None else tuple(self.shape),
        )


def _json(name: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ArgumentError(name, f"must hold JSON values only: {err}") from err


def check_count(name: str, value: Any, low: int = 1) -> int:
    """An integer count >= ``low`` (bools refused), else an ``ArgumentError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArgumentError(name, f"must be an integer >= {low}, got {value!r}")
    return value


def _sampler_fields(
    solver: str,
    nfe: int | None,
    spacing: Any,
    solver_options: Mapping[str, Any],
    config: Any,
) -> dict[str, Any]:
    if config is not None:
        if solver != "auto" or spacing is not None or solver_options:
            raise ArgumentError(
                "config", "fixes the solver, nfe and times", "drop --solver, --spacing, --option"
            )
        record = _config_record(config)
        if nfe is not None and nfe != record["nfe"]:
            raise ArgumentError("nfe", f"{nfe} differs from the config's {record['nfe']}")
        return {
            "solver": record["solver"],
            "nfe": record["nfe"],
            "spacing": None,
            "solver_options": {},
            "config": record,
        }
    if solver != "auto" and get_solver(solver, **solver_options).adaptive:
        raise ArgumentError(
            "solver",
            f"{solver!r} is adaptive: its steps depend on the whole batch, so a sample would "
            "depend on the batch it is in",
            "use a fixed-step solver",
        )
    if spacing is not None and not isinstance(spacing, str):
        spacing = [float(t) for t in spacing]
    return {
        "solver": solver,
        "nfe": check_count("nfe", DEFAULT_NFE if nfe is None else nfe),
        "spacing": spacing,
        "solver_options": _json("solver options", dict(solver_options)),
        "config": None,
    }


def make_spec(
    model: str,
    *,
    solver: str = "auto",
    nfe: int | None = None,
    spacing: str | list[float] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    config: Any = None,
    seed: int = 0,
    guidance: float = 1.0,
    labels: Labels = "auto",
    model_options: Mapping[str, Any] | None = None,
    shape: list[int] | tuple[int, ...] | None = None,
    dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> GenerationSpec:
    """A validated spec; ``labels="auto"`` means "cycle" for class-conditional models (the
    shipped digits) and None otherwise."""
    if not isinstance(model, str):
        raise ArgumentError(
            "model", f"expected a name or package.module:factory, got {type(model).__name__}"
        )
    model_options = dict(model_options or {})
    if "guidance_scale" in model_options:
        raise ArgumentError("model options", "guidance_scale is set by guidance (--guidance)")
    options, weights, conditional = sources.identify(model, model_options)
    if labels == "auto":
        labels = "cycle" if conditional else None
    fixed = isinstance(labels, int) and not isinstance(labels, bool) and labels >= 0
    if not (labels is None or labels == "cycle" or fixed):
        raise ArgumentError("labels", f"got {labels!r}", "'cycle', a class index or None")
    if labels is not None and conditional is False:
        raise ArgumentError("labels", f"{model!r} is unconditional", "leave --labels at auto")
    if labels is None and float(guidance) != 1.0:
        raise ArgumentError("guidance", "needs labels (classifier-free guidance is conditional)")
    if dtype not in DTYPES:
        raise ArgumentError("dtype", f"unknown {dtype!r}", f"one of {sorted(DTYPES)}")
    check_count("seed", seed, 0)
    return GenerationSpec(
        model=model,
        model_options=_json("model options", options),
        weights_sha256=weights,
        guidance=float(guidance),
        labels=labels,
        shape=None if shape is None else [check_count("shape", int(s)) for s in shape],
        seed=seed,
        dtype=dtype,
        shard_size=check_count("shard_size", shard_size),
        **_sampler_fields(solver, nfe, spacing, solver_options or {}, config),
    )
