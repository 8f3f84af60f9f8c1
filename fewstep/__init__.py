"""fewstep: few-step sampling for pretrained diffusion and flow models, measured against
exact references."""

from . import reference, solvers
from .errors import ArgumentError, FewstepError, ModelOutputError, NonFiniteError
from .generation import generate, load_samples
from .guidance import DynamicThresholding
from .model import Model, Prediction
from .noise import randn
from .sampling import StepInfo, Trajectory, plan, sample
from .schedules import (
    CosineVPSchedule,
    EDMSchedule,
    FlowSchedule,
    LinearVPSchedule,
    NoiseSchedule,
    VPSchedule,
)
from .spacing import Spacing
from .tuner import SamplerConfig, Teacher, tune

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "CosineVPSchedule",
    "DynamicThresholding",
    "EDMSchedule",
    "FewstepError",
    "FlowSchedule",
    "LinearVPSchedule",
    "Model",
    "ModelOutputError",
    "NoiseSchedule",
    "NonFiniteError",
    "Prediction",
    "SamplerConfig",
    "Spacing",
    "StepInfo",
    "Teacher",
    "Trajectory",
    "VPSchedule",
    "generate",
    "load_samples",
    "plan",
    "randn",
    "reference",
    "sample",
    "solvers",
    "tune",
]
