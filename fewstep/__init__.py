"""fewstep: few-step sampling for pretrained diffusion and flow models, measured against
exact references."""

from . import reference, solvers
from .errors import ArgumentError, FewstepError, ModelOutputError, NonFiniteError
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
    "Spacing",
    "StepInfo",
    "Trajectory",
    "VPSchedule",
    "plan",
    "randn",
    "reference",
    "sample",
    "solvers",
]
