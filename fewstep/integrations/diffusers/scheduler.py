"""A diffusers scheduler that runs any fewstep solver inside a diffusers pipeline.

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m",
                                                  spacing="karras")

It reads the pipeline's scheduler config (betas, prediction type, flow shift and dynamic
shifting), compiles the solver's program once per ``set_timesteps``, and executes it one
model call per ``step``: ``timesteps`` lists the times of the model calls (a two-call solver
lists a time twice), and ``step`` returns the state of the next call, or the final data
prediction after the last. The math is fewstep's; this class only translates.

Timesteps: with ``timestep_type="discrete"`` (the default for VP schedules, what UNets of
diffusers pipelines are trained on) the solver's grid is rounded to integer timesteps before
compiling, so the model and the coefficients see the same times; only a sampler that
evaluates between grid points (``dpmpp_2s_ancestral``, ``restart``, churn) then hands the
model a rounded time, an error of at most half a training timestep. ``"continuous"`` passes
fractional timesteps to the model. Flow models always get t * num_train_timesteps.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as err:  # pragma: no cover - diffusers is an optional integration
    raise ImportError(
        "fewstep.integrations.diffusers needs diffusers: pip install fewstep[peers]"
    ) from err

from ...errors import ArgumentError, NonFiniteError
from ...guidance import DynamicThresholding
from ...model import Model, Point, to_predictions
from ...noise import IndependentNoise, sample_seeds
from ...program import Execution
from ...sampling import plan, resolve
from ...schedules import FlowSchedule, NoiseSchedule, VPSchedule
from ...solvers import Solver
from ...spacing import Times

_PREDICTIONS = {
    "epsilon": "epsilon",
    "sample": "sample",
    "v_prediction": "v",
    "flow_prediction": "flow",
}


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """Any fewstep solver as a diffusers scheduler (see the module docstring)."""

    _compatibles: ClassVar[list[str]] = []  # diffusers concatenates this list
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        schedule_type: str = "vp",
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        timestep_type: str | None = None,
        solver: str = "auto",
        solver_options: dict[str, Any] | None = None,
        spacing: str | list[float] | None = None,
        seed: int | None = None,
        tuned: str | None = None,
    ):
        if prediction_type not in _PREDICTIONS:
            raise ArgumentError(
                "prediction_type", f"unknown {prediction_type!r}", f"one of {sorted(_PREDICTIONS)}"
            )
        if schedule_type not in ("vp", "flow"):
            raise ArgumentError("schedule_type", f"unknown {schedule_type!r}", "'vp' or 'flow'")
        self.schedule = self._schedule(shift)
        self.prediction = _PREDICTIONS[prediction_type]
        if schedule_type == "flow" and self.prediction == "epsilon":
            self.prediction = "flow"  # flow-matching configs carry no prediction_type
        self._tuned = None
        if tuned is not None:
            from ...tuner import SamplerConfig

            self._tuned = SamplerConfig.load(tuned)
            self._tuned.check(self._model())
            if self._tuned.gaussian is not None:
                raise ArgumentError(
                    "tuned",
                    "this sampler's first step is analytic, but a pipeline calls the model on "
                    "its initial latents first",
                    "tune with fewstep.tune(..., analytic=False) for diffusers pipelines, or "
                    "sample with fewstep.sample(..., config=...)",
                )
        continuous = schedule_type == "flow" or tuned is not None
        self._timestep_type = timestep_type or ("continuous" if continuous else "discrete")
        self.timesteps = torch.tensor([])
        self.sigmas = torch.tensor([])
        self.num_inference_steps = None
        self._begin_index = None
        self._plan = None
        self._program = None
        self._execution = None

    # -- configuration --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """From any diffusers scheduler's config; flow-matching configs become flow schedules."""
        cfg = dict(config or {})
        flow_shaped = "beta_schedule" not in cfg and (
            "shift" in cfg or "use_dynamic_shifting" in cfg
        )
        if (
            str(cfg.get("_class_name", "")).startswith("FlowMatch")
            or flow_shaped
            or cfg.get("use_flow_sigmas")
            or cfg.get("prediction_type") == "flow_prediction"
        ):
            kwargs.setdefault("schedule_type", "flow")
            kwargs.setdefault("shift", cfg.get("flow_shift", cfg.get("shift", 1.0)))
            kwargs.setdefault("prediction_type", "flow_prediction")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _schedule(self, shift: float) -> NoiseSchedule:
        c = self.config
        if c.schedule_type == "flow":
            return FlowSchedule(shift=shift, t_min=1.0 / c.num_train_timesteps)
        zero_snr = bool(c.rescale_betas_zero_snr)
        if c.trained_betas is not None:
            return VPSchedule.from_betas(c.trained_betas, rescale_zero_terminal_snr=zero_snr)
        makers = {
            "linear": lambda: VPSchedule.linear(
                c.beta_start, c.beta_end, c.num_train_timesteps, rescale_zero_terminal_snr=zero_snr
            ),
            "scaled_linear": lambda: VPSchedule.scaled_linear(
                c.beta_start, c.beta_end, c.num_train_timesteps, rescale_zero_terminal_snr=zero_snr
            ),
            "squaredcos_cap_v2": lambda: VPSchedule.squaredcos_cap_v2(
                c.num_train_timesteps, rescale_zero_terminal_snr=zero_snr
            ),
        }
        if c.beta_schedule not in makers:
            raise ArgumentError(
                "beta_schedule", f"unknown {c.beta_schedule!r}", f"one of {sorted(makers)}"
            )
        return makers[c.beta_schedule]()

    def _shifted(self, mu: float | None, fix: str) -> NoiseSchedule:
        """The schedule at dynamic shift ``mu`` (shift = e^mu), for configs that shift."""
        if mu is not None:
            if self.config.schedule_type != "flow":
                raise ArgumentError("mu", "dynamic shifting applies to flow-matching schedules")
            return self._schedule(math.exp(mu))
        if self.config.use_dynamic_shifting and self.config.schedule_type == "flow":
            raise ArgumentError("mu", "this config uses dynamic shifting", fix)
        return self.schedule

    def model(self, fn, *, mu: float | None = None, **options: Any) -> Model:
        """A fewstep ``Model`` of ``fn(x, t, **cond)`` (t in fewstep's native time) on this
        config's schedule, at dynamic shift ``mu`` where it shifts, with its prediction type
        and thresholding; ``options`` go to ``Model`` (guidance_scale, dtype, ...)."""
        schedule = self._shifted(mu, "pass mu=, the shift the pipeline computes for the size")
        return Model(fn, schedule, self.prediction, thresholding=self._thresholding(), **options)

    def _model(self) -> Model:
        """A stand-in fewstep model: planning needs the schedule and parameterization only."""
        return Model(
            lambda x, t: x, self.schedule, self.prediction, thresholding=self._thresholding()
        )

    def _thresholding(self) -> DynamicThresholding | None:
        c = self.config
        if not c.thresholding:
            return None
        return DynamicThresholding(c.dynamic_thresholding_ratio, c.sample_max_value)

    # -- time units -----------------------------------------------------------------------
    @property
    def time_scale(self) -> float:
        """Pipeline timesteps per unit of fewstep's time: num_train_timesteps for flow
        schedules (whose t runs over [0, 1]), 1 for VP (t counts training timesteps)."""
        return float(self.config.num_train_timesteps if self.config.schedule_type == "flow" else 1)

    def _to_pipeline(self, t: float) -> float:
        if self.config.schedule_type == "vp" and self._timestep_type == "discrete":
            return round(t)
        return t * self.time_scale

    def _from_pipeline(self, values) -> Tensor:
        return torch.as_tensor(values, dtype=torch.float64).flatten() / self.time_scale

    # -- the scheduler interface ----------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        return float(self.schedule.initial_scale(self.schedule.t_max))

    @property
    def step_index(self) -> int | None:
        return None if self._execution is None else self._calls

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at this model call (image-to-image): the solver restarts from there."""
        self._begin_index = int(begin_index)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Compile the solver for ``num_inference_steps`` model calls (or for given timesteps /
        sigmas: noise levels sigma/alpha, or t for flow). ``mu`` is the dynamic shift of
        flow pipelines (shift = e^mu)."""
        self.schedule = self._shifted(mu, "pass mu= to set_timesteps")
        model = self._model()
        options = dict(self.config.solver_options or {})
        if self._tuned is not None:
            if (
                timesteps is not None
                or sigmas is not None
                or num_inference_steps
                not in (
                    None,
                    self._tuned.nfe,
                )
            ):
                raise ArgumentError(
                    "num_inference_steps",
                    f"the tuned sampler makes {self._tuned.nfe} model calls on its own times",
                    f"pass {self._tuned.nfe}",
                )
            self._set_program(self._tuned.program(model), self._tuned.nfe, device)
            return
        if timesteps is not None or sigmas is not None:
            if sigmas is not None:
                given = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
                given = given[given > 0]
                times = (
                    given
                    if self.config.schedule_type == "flow"
                    else self.schedule.t_of_edm_sigma(given)
                )
            else:
                times = self._from_pipeline(timesteps)
            solver, _ = resolve(model, self.config.solver, None, len(times), **options)
            nfe = solver.nfe_for_points(len(times))
            spacing = Times(tuple(times.tolist()))
        else:
            if num_inference_steps is None:
                raise ArgumentError(
                    "num_inference_steps", "give the number of model calls, timesteps or sigmas"
                )
            nfe = int(num_inference_steps)
            spacing = (
                self.config.spacing
                if not isinstance(self.config.spacing, list)
                else Times(tuple(float(v) for v in self.config.spacing))
            )
            solver, spacing = resolve(model, self.config.solver, spacing, nfe, **options)
            if self.config.schedule_type == "vp" and self._timestep_type == "discrete":
                n = solver.grid_size(nfe, False)
                rounded = np.round(spacing.times(self.schedule, n).numpy())
                if len(set(rounded.tolist())) != n:
                    raise ArgumentError(
                        "num_inference_steps",
                        f"{nfe} calls need {n} distinct integer timesteps",
                        "fewer steps, or timestep_type='continuous'",
                    )
                spacing = Times(tuple(rounded.tolist()))
        self._plan = plan(model, solver, nfe, spacing)
        self._set_program(self._plan[2], nfe, device)

    def _set_program(self, program, nfe: int, device) -> None:
        self._program = program
        calls = program.evaluations
        self.timesteps = torch.tensor(
            [self._to_pipeline(e.point.t) for e in calls],
            dtype=torch.float32 if self._timestep_type == "continuous" else torch.int64,
            device=device,
        )
        ve = [e.point.sigma / e.point.alpha if e.point.alpha else math.inf for e in calls]
        level = [e.point.t for e in calls] if self.config.schedule_type == "flow" else ve
        self.sigmas = torch.tensor([*level, 0.0], dtype=torch.float32)
        self.num_inference_steps = nfe
        self.order = 2 if len(calls) > 1.5 * len({e.point.t for e in calls}) else 1
        self._execution = None
        self._begin_index = None

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """fewstep's states are what the model takes: nothing to scale."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        **unused: Any,
    ) -> SchedulerOutput | tuple:
        """Consume the model output of the pending call and return the next call's state (the
        final data prediction after the last call)."""
        if self._program is None:
            raise ArgumentError("set_timesteps", "call set_timesteps before step")
        if eta not in (None, 0, 0.0):
            raise ArgumentError(
                "eta", f"{eta} needs a stochastic solver", "FewstepScheduler(solver='ddim_eta')"
            )
        if use_clipped_model_output:
            raise ArgumentError(
                "use_clipped_model_output", "is not supported", "use thresholding=True"
            )
        if unused:
            raise ArgumentError(f"step({', '.join(unused)})", "is not a FewstepScheduler option")
        if self._execution is None:
            self._start(sample, generator)
        ins = self._pending
        expected = self._to_pipeline(ins.point.t)
        if abs(float(timestep) - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ArgumentError(
                "timestep",
                f"got {float(timestep)}, the pending call is at {expected}",
                "iterate over scheduler.timesteps in order",
            )
        state = (
            sample.to(torch.float32) if sample.dtype in (torch.float16, torch.bfloat16) else sample
        )
        self._execution.registers[ins.state] = state
        raw = model_output.to(state.dtype)
        pred = self._predictions(raw, state, ins.point)
        if not torch.isfinite(pred.data).all():
            raise NonFiniteError(ins.step, ins.point.t)
        self._execution.give(pred)
        self._calls += 1
        nxt = self._execution.advance()
        out = self._execution.output if nxt is None else self._execution.state(nxt)
        self._pending = nxt
        if nxt is None:
            self._execution = None
        out = out.to(sample.dtype)
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)

    def _predictions(self, raw: Tensor, x: Tensor, point: Point):
        m = self._model()
        return to_predictions(
            raw,
            x,
            point.alpha,
            point.sigma,
            point.d_alpha,
            point.d_sigma,
            self.prediction,
            self.schedule.variance_preserving,
            m.thresholding,
        )

    def _start(self, sample: Tensor, generator: torch.Generator | None) -> None:
        program = self._program
        if self._begin_index:
            if self._tuned is not None:
                raise ArgumentError("begin_index", "a tuned sampler runs from its first time")
            program = self._restarted(self._plan[0], self._begin_index)
        noise = None
        if program.stochastic:
            if self.config.seed is not None:
                base = self.config.seed
            else:
                base = int(torch.randint(0, 2**62, (), generator=generator))
            noise = IndependentNoise(sample_seeds(base, sample.shape[0]))
        self._execution = Execution(program, sample, noise)
        self._pending = self._execution.advance()
        self._calls = self._begin_index or 0

    def _restarted(self, solver: Solver, begin: int):
        """The program for the model calls from index ``begin`` on (history starts afresh)."""
        calls = self._plan[2].evaluations[begin:]
        times = sorted({e.point.t for e in calls}, reverse=True)
        sub = plan(self._model(), solver, len(calls), Times(tuple(times)))[2]
        if [e.point.t for e in sub.evaluations] != [e.point.t for e in calls]:
            raise ArgumentError(
                "begin_index",
                f"{solver.name!r} cannot start at model call {begin}",
                "start at a step boundary",
            )
        return sub

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps (the forward process, for image-to-image)."""
        t = self._from_pipeline(timesteps.detach().cpu())
        alpha, sigma = self.schedule.alpha_sigma(t)
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        a = alpha.to(original_samples).view(shape)
        s = sigma.to(original_samples).view(shape)
        return a * original_samples + s * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
