"""The tuner: calibrate a sampler's times, orders and coefficients to a model and budget."""

from .config import Correction, SamplerConfig
from .teacher import Teacher
from .tune import calibration_loss, refit_first_step, tune

__all__ = ["Correction", "SamplerConfig", "Teacher", "calibration_loss", "refit_first_step", "tune"]
