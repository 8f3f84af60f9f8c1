"""A tuned sampler: solver, time grid and coefficient corrections, saved as a small JSON.

The program a configuration runs is the solver compiled on its times, with additive
corrections on the coefficients of its combinations: ``corrections[c]`` holds the change of
the c-th combination's scale and of its data coefficients on any earlier evaluation (a
tuned step may use all the history, not only the solver's). Zero corrections are the plain
solver on the tuned grid. One more correction than combinations corrects the result
(the last call's data prediction plus changes on its state and on every evaluation's data):
a few-step sampler's last call is a denoiser whose output the history can sharpen. With
``gaussian`` (a data mean and variance) the first of the solver's evaluations is the
analytic first step (fewstep.analytic), not a model call: the solver is compiled for
nfe + 1 evaluations and still makes nfe model calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..analytic import GaussianData, analytic_start
from ..errors import ArgumentError
from ..io import atomic_write_text
from ..model import Model, Point, points
from ..program import Combine, Estimate, Evaluate, Program, Term, with_releases
from ..sampling import plan
from ..spacing import Times

FORMAT = "fewstep-sampler-config/1"


@dataclass
class Correction:
    """Additive changes to one combination: its scale and its data coefficients."""

    scale: float = 0.0
    data: dict[int, float] = field(default_factory=dict)


@dataclass
class SamplerConfig:
    """What ``fewstep.tune`` returns and ``fewstep.sample(..., config=...)`` runs."""

    solver: str
    options: dict[str, Any]
    times: list[float]
    nfe: int
    schedule: dict[str, Any]
    prediction: str
    corrections: list[Correction] = field(default_factory=list)
    call_times: list[float] | None = None
    gaussian: dict[str, Any] | None = None  # GaussianData.record() of an analytic first step
    meta: dict[str, Any] = field(default_factory=dict)

    # -- files ----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The JSON-ready form (a config file's content, or a field of a generation spec)."""
        return json.loads(json.dumps({**asdict(self), "format": FORMAT}))

    @classmethod
    def from_record(cls, data: dict[str, Any], source: str = "the record") -> SamplerConfig:
        data = dict(data)
        if data.pop("format", None) != FORMAT:
            raise ArgumentError("config", f"{source} is not a {FORMAT} file")
        data["corrections"] = [
            Correction(c["scale"], {int(k): float(v) for k, v in c["data"].items()})
            for c in data.get("corrections", [])
        ]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.record(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SamplerConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ArgumentError(
                "config", f"cannot read a sampler config from {path}: {err}"
            ) from err
        return cls.from_record(data, str(path))

    # -- running --------------------------------------------------------------------------
    def check(self, model: Model) -> None:
        """Raise unless this configuration was tuned for this model's schedule and output."""
        if self.schedule != model.schedule.config():
            raise ArgumentError(
                "config",
                "was tuned for another noise schedule",
                "tune it for this model (fewstep.tune)",
            )
        if self.prediction != model.prediction:
            raise ArgumentError(
                "config", f"was tuned for a {self.prediction!r} model, not {model.prediction!r}"
            )

    @property
    def evaluations(self) -> int:
        """The solver's evaluations: the model calls, and the analytic first step if any."""
        return self.nfe + (self.gaussian is not None)

    def program(self, model: Model) -> Program:
        """The solver compiled on the tuned times, the analytic first step, corrections and
        call times applied."""
        self.check(model)
        times = Times(tuple(self.times))
        _, _, base = plan(model, self.solver, self.evaluations, times, **self.options)
        if self.gaussian is not None:
            base = analytic_start(base, GaussianData.from_record(self.gaussian))
        program = corrected(base, self.corrections)
        if self.call_times is not None:
            program = shifted(program, points(model.schedule, self.call_times))
        return program


def shifted(program: Program, call_points: Sequence[Point]) -> Program:
    """The program with its model calls made at other points (a time-shift sampler: the
    coefficients keep the grid's times, the network sees times matched to the states)."""
    evaluations = [i for i, ins in enumerate(program.instructions) if isinstance(ins, Evaluate)]
    if len(evaluations) != len(call_points):
        raise ArgumentError(
            "config", f"has {len(call_points)} call times for {len(evaluations)} calls"
        )
    instructions = list(program.instructions)
    for index, point in zip(evaluations, call_points, strict=True):
        ins = instructions[index]
        instructions[index] = Evaluate(ins.state, point, ins.step)
    return replace(program, instructions=tuple(instructions))


def corrected(program: Program, corrections: list[Correction]) -> Program:
    """The program with additive corrections on its combinations' coefficients (floats or
    tensors, so a tuner can learn them). One correction more than combinations corrects the
    result: it becomes a finish combination, the output evaluation's data prediction plus
    changes on the state that evaluation saw (``scale``) and on every evaluation's data."""
    if not corrections:
        return program
    combines = [i for i, ins in enumerate(program.instructions) if isinstance(ins, Combine)]
    if len(corrections) not in (len(combines), len(combines) + 1):
        raise ArgumentError(
            "config",
            f"has {len(corrections)} corrections for a program with {len(combines)} combinations",
            "retune for this solver and nfe",
        )
    instructions = list(program.instructions)
    for index, corr in zip(combines, corrections, strict=False):
        instructions[index] = _corrected(instructions[index], corr)
    finish = program.finish
    if len(corrections) > len(combines):
        evaluations = [ins for ins in instructions if isinstance(ins, (Evaluate, Estimate))]
        finish = _corrected(
            finish
            or Combine(0, evaluations[program.output].state, 0.0, (Term(program.output, 1.0),)),
            corrections[-1],
        )
    return with_releases(
        tuple(instructions), program.output, program.n_registers, program.draws, finish
    )


def _corrected(ins: Combine, corr: Correction) -> Combine:
    terms = {t.source: [t.data, t.noise] for t in ins.terms}
    for source, delta in corr.data.items():
        entry = terms.setdefault(source, [0.0, 0.0])
        entry[0] = entry[0] + delta
    return replace(
        ins,
        scale=ins.scale + corr.scale,
        terms=tuple(Term(s, d, e) for s, (d, e) in terms.items()),
    )
