"""The one core every deterministic sampler runs on.

A solver does not loop over the model: it compiles a time grid into a ``Program``, a short
list of two instructions,

    Evaluate(state, point)                 -> evaluation k: (D_k, eps_k) = model(state, point)
    Combine(target, base, scale, terms)    -> target = scale * base + sum_j (a_j D_j + b_j eps_j)

(and ``Estimate``, an evaluation that an approximation of the data makes instead of the model)
with every coefficient computed once, on the host, before sampling starts. The result is the
data prediction of the output evaluation or, in a tuned program, a ``finish`` combination of
the last state and the evaluations.

The executor below is the only sampling loop; solvers differ only in their coefficients
(DESIGN.md), and a tuner can rewrite the coefficients of a compiled program directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from .model import Point, Prediction

Coefficient = float  # a Python float, or a 0-d tensor when a tuner learns it


@dataclass(frozen=True)
class Term:
    """a * D + b * eps of evaluation ``source``."""

    source: int
    data: Coefficient = 0.0
    noise: Coefficient = 0.0


@dataclass(frozen=True)
class Draw:
    """A standard-normal draw, per sample: the ``index``-th draw of the program, for the
    step from classical noise level ``tau0`` to ``tau1`` (a Brownian tree uses the interval,
    independent noise the index)."""

    index: int
    tau0: float
    tau1: float


@dataclass(frozen=True)
class Evaluate:
    """Call the model on register ``state`` at ``point``; ``step`` names it in errors."""

    state: int
    point: Point
    step: int


@dataclass(frozen=True)
class Estimate:
    """An evaluation made without the model: ``by(state, point, cond)`` approximates
    (D, eps), as the analytic first step does; it counts as an evaluation, not as a model
    call."""

    state: int
    point: Point
    by: Callable[[Tensor, Point, Mapping[str, Any] | None], Prediction]


@dataclass(frozen=True)
class Combine:
    """register[target] = scale * register[base] + sum of ``terms``.

    ``lands`` is the grid index the result sits at when it is a step's end state (for
    trajectories and callbacks), None for intermediate stage states.
    """

    target: int
    base: int
    scale: Coefficient
    terms: tuple[Term, ...]
    lands: int | None = None
    draws: tuple[tuple[int, Coefficient], ...] = ()  # (draw index, coefficient)


Instruction = Evaluate | Estimate | Combine


@dataclass(frozen=True)
class Program:
    """A compiled sampler: instructions, and the evaluation whose data prediction is the
    result, or (``finish``) the combination that forms the result after the last
    instruction (its target is unused)."""

    instructions: tuple[Instruction, ...]
    output: int
    n_registers: int
    releases: tuple[tuple[int, ...], ...] = field(repr=False, default=())
    draws: tuple[Draw, ...] = ()
    finish: Combine | None = None

    @property
    def nfe(self) -> int:
        return sum(isinstance(ins, Evaluate) for ins in self.instructions)

    @property
    def evaluations(self) -> list[Evaluate]:
        return [ins for ins in self.instructions if isinstance(ins, Evaluate)]

    @property
    def stochastic(self) -> bool:
        return bool(self.draws)

    def run(
        self,
        evaluate: Callable[[Tensor, Evaluate], Prediction],
        x: Tensor,
        on_land: Callable[[int, Tensor], None] | None = None,
        noise: Callable[[Draw, Tensor], Tensor] | None = None,
        cond: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """Execute on start state ``x``; ``evaluate`` calls the model for one instruction,
        ``noise(draw, like)`` supplies the standard-normal draws of stochastic programs,
        ``cond`` is the condition estimates see."""
        execution = Execution(self, x, noise, on_land, cond)
        while (ins := execution.advance()) is not None:
            execution.give(evaluate(execution.state(ins), ins))
        return execution.output


class Execution:
    """A program run one model evaluation at a time: ``advance`` executes the combinations
    up to the next evaluation and returns it (None at the end), ``give`` hands back its
    result. ``Program.run`` drives it in a loop; a diffusers scheduler drives it from
    ``step``, where the pipeline owns the loop."""

    def __init__(
        self,
        program: Program,
        x: Tensor,
        noise: Callable[[Draw, Tensor], Tensor] | None = None,
        on_land: Callable[[int, Tensor], None] | None = None,
        cond: Mapping[str, Any] | None = None,
    ):
        if program.draws and noise is None:
            raise ValueError("this program draws noise: pass a noise source")
        self.program, self.noise, self.on_land, self.cond = program, noise, on_land, cond
        self.registers: list[Tensor | None] = [None] * program.n_registers
        self.registers[0] = x
        self.results: list[Prediction | None] = []
        self._next = 0  # index of the next instruction to execute
        if on_land is not None:
            on_land(0, x)

    def state(self, ins: Evaluate) -> Tensor:
        """The state an evaluation is made at."""
        return self.registers[ins.state]

    def advance(self) -> Evaluate | None:
        """Execute combinations up to the next evaluation and return it; None when done."""
        program = self.program
        while self._next < len(program.instructions):
            ins = program.instructions[self._next]
            if isinstance(ins, Evaluate):
                return ins
            if isinstance(ins, Estimate):
                self.results.append(ins.by(self.registers[ins.state], ins.point, self.cond))
                self._release()
                continue
            out = combine(self.registers[ins.base], ins.scale, ins.terms, self.results)
            for index, coef in ins.draws:
                z = self.noise(program.draws[index], out)
                out = out.add_(z, alpha=coef) if isinstance(coef, float) else out + coef * z
            self.registers[ins.target] = out
            if self.on_land is not None and ins.lands is not None:
                self.on_land(ins.lands, out)
            self._release()
        return None

    def give(self, prediction: Prediction) -> None:
        """The result of the evaluation ``advance`` returned."""
        ins = self.program.instructions[self._next]
        if not isinstance(ins, Evaluate):
            raise RuntimeError("no evaluation is pending")
        self.results.append(prediction)
        self._release()

    def _release(self) -> None:
        for k in self.program.releases[self._next]:
            self.results[k] = None
        self._next += 1

    @property
    def done(self) -> bool:
        return self._next >= len(self.program.instructions)

    @property
    def output(self) -> Tensor:
        """The result (once done): the output evaluation's data prediction, or the finish."""
        if not self.done:
            raise RuntimeError("the program has not finished")
        finish = self.program.finish
        if finish is None:
            return self.results[self.program.output].data
        return combine(self.registers[finish.base], finish.scale, finish.terms, self.results)


def combine(
    base: Tensor, scale: Coefficient, terms: Sequence[Term], results: Sequence[Prediction | None]
) -> Tensor:
    """scale * base + sum_j (a_j D_j + b_j eps_j): the single place where states are formed."""
    out = base * scale
    for term in terms:
        pred = results[term.source]
        for coef, value in ((term.data, pred.data), (term.noise, pred.noise)):
            if isinstance(coef, float):
                if coef != 0.0:
                    out.add_(value, alpha=coef)
            else:
                out = out + coef * value
    return out


class ProgramBuilder:
    """Accumulates instructions; solvers call ``evaluate`` and ``combine`` in order."""

    def __init__(self) -> None:
        self._instructions: list[Instruction] = []
        self._n_evaluations = 0
        self._n_registers = 1
        self._draws: list[Draw] = []

    def draw(self, tau0: float, tau1: float) -> int:
        """A new standard-normal draw for the step between classical noise levels tau0, tau1."""
        self._draws.append(Draw(len(self._draws), float(tau0), float(tau1)))
        return len(self._draws) - 1

    def register(self) -> int:
        """A fresh scratch register (register 0 holds the sampler state)."""
        self._n_registers += 1
        return self._n_registers - 1

    def evaluate(self, state: int, point: Point, step: int) -> int:
        return self._add_evaluation(Evaluate(state, point, step))

    def _add_evaluation(self, ins: Evaluate | Estimate) -> int:
        """Append an evaluation; returns its index among the program's evaluations."""
        self._instructions.append(ins)
        self._n_evaluations += 1
        return self._n_evaluations - 1

    def combine(
        self,
        target: int,
        base: int,
        scale: Coefficient,
        terms: Iterable[Term],
        lands: int | None = None,
        draws: Iterable[tuple[int, Coefficient]] = (),
    ) -> None:
        self._instructions.append(Combine(target, base, scale, tuple(terms), lands, tuple(draws)))

    def inline(
        self, program: Program, land_offset: int | None = 0, keep_output: bool = False
    ) -> int:
        """Append a compiled program acting on register 0, its evaluations, registers and
        draws renumbered. Without ``keep_output`` its last evaluation (the data prediction
        it would return) is left out, so the segment ends with its state in register 0.
        ``land_offset`` shifts the grid indices its steps land on (None drops them).
        Returns the new index of its output evaluation (-1 when left out)."""
        if program.finish is not None:
            raise ValueError("a program with a finish combination cannot be inlined")
        registers = {0: 0}
        sources: dict[int, int] = {}
        draws: dict[int, int] = {}
        evaluations = 0

        def reg(r: int) -> int:
            if r not in registers:
                registers[r] = self.register()
            return registers[r]

        for ins in program.instructions:
            if isinstance(ins, (Evaluate, Estimate)):
                if evaluations == program.output and not keep_output:
                    evaluations += 1
                    continue
                sources[evaluations] = self._add_evaluation(replace(ins, state=reg(ins.state)))
                evaluations += 1
                continue
            for index, _ in ins.draws:
                if index not in draws:
                    d = program.draws[index]
                    draws[index] = self.draw(d.tau0, d.tau1)
            terms = [Term(sources[t.source], t.data, t.noise) for t in ins.terms]
            lands = None if ins.lands is None or land_offset is None else ins.lands + land_offset
            self.combine(
                reg(ins.target),
                reg(ins.base),
                ins.scale,
                terms,
                lands,
                [(draws[i], c) for i, c in ins.draws],
            )
        return sources.get(program.output, -1)

    def build(self, output: int) -> Program:
        return with_releases(
            tuple(self._instructions), output, self._n_registers, tuple(self._draws)
        )


def with_releases(
    instructions: tuple[Instruction, ...],
    output: int,
    n_registers: int,
    draws: tuple[Draw, ...] = (),
    finish: Combine | None = None,
) -> Program:
    """A program that frees each evaluation after its last use (bounded memory)."""
    last_use: dict[int, int] = {}
    k = 0
    for i, ins in enumerate(instructions):
        if isinstance(ins, (Evaluate, Estimate)):
            last_use[k] = i
            k += 1
        else:
            for term in ins.terms:
                last_use[term.source] = i
    for source in (output, *(() if finish is None else (t.source for t in finish.terms))):
        last_use[source] = len(instructions)
    releases: list[list[int]] = [[] for _ in instructions]
    for source, i in last_use.items():
        if i < len(instructions):
            releases[i].append(source)
    return Program(
        instructions, output, n_registers, tuple(tuple(r) for r in releases), draws, finish
    )
