"""The analytic first step: a Gaussian fitted to the data stands in for the first model call.

At the start of sampling the state is almost pure noise, and E[x0 | x_t] of the data is close
to that of a Gaussian with the data's mean and variance (Zhou et al., "Fast ODE-based
sampling for diffusion models in around 5 steps", AFS). With per-element mean m and variance
v, x_t = alpha x0 + sigma eps gives, element by element,

    eps = sigma (x_t - alpha m) / (alpha^2 v + sigma^2),    D = m + alpha v eps / sigma,

so the first evaluation costs no model call and the budget goes to later steps. For a
class-conditional model the mean is the class's (the variance then pooled within classes):
the condition's integer labels pick it per sample; a class without a mean (fewer than two
calibration samples of it) starts from the overall mean, with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .model import Point, Prediction
from .program import Estimate, Evaluate, Program


@dataclass(frozen=True, eq=False)
class GaussianData:
    """Per-element mean and variance of the data (the shape of one sample), and optionally
    the mean of each class, picked by the integer labels under ``label_key`` in the
    condition (a label without one falls back to ``mean``)."""

    mean: Tensor
    var: Tensor
    label_key: str | None = None
    class_means: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, samples: Tensor, labels: Tensor | None = None, label_key: str | None = None
    ) -> GaussianData:
        """The mean and variance of ``samples`` (batch, ...), e.g. a teacher's end points;
        given their class ``labels`` (and the condition's ``label_key``), class means for the
        classes with two or more samples, and the variance about them."""
        if samples.ndim < 2 or samples.shape[0] < 2:
            raise ArgumentError("samples", "fitting a Gaussian needs a batch of 2 or more samples")
        x = samples.detach().to(torch.float64).cpu()
        if labels is None:
            return cls(x.mean(0), x.var(0))
        if label_key is None or labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise ArgumentError(
                "labels", "give one integer label per sample, and the condition key they are under"
            )
        labels = labels.detach().cpu()
        classes, counts = labels.unique(return_counts=True)
        means = {
            int(c): x[labels == c].mean(0) for c, n in zip(classes, counts, strict=True) if n >= 2
        }
        centre, has_class = _class_rows(x.mean(0), means, labels)
        # one degree of freedom per mean estimated: each class's, and the overall one where
        # a sample's class has none
        dof = max(x.shape[0] - len(means) - int(not bool(has_class.all())), 1)
        return cls(x.mean(0), (x - centre).pow(2).sum(0) / dof, label_key, means)

    def means(self, x: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        """The mean each sample of ``x`` is drawn towards: its class's, or the overall one."""
        mean = self.mean.to(x)
        if self.label_key is None:
            return mean
        labels = None if cond is None else cond.get(self.label_key)
        if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],):
            raise ArgumentError(
                "cond",
                f"the analytic first step was fitted per class: it needs the labels under "
                f"{self.label_key!r}, one per sample",
            )
        rows, has_class = _class_rows(self.mean, self.class_means, labels)
        if not bool(has_class.all()):
            missing = sorted({int(c) for c in labels.cpu()[~has_class]})
            warnings.warn(
                f"the analytic first step has no mean for class(es) {missing} under "
                f"{self.label_key!r} (fewer than two calibration samples of each): they start "
                "from the mean of all calibration samples; tune with two or more calibration "
                "samples of every class you sample, or refit the first step with "
                "fewstep.tuner.refit_first_step",
                stacklevel=2,
            )
        return rows.to(x)

    def predict(self, x: Tensor, point: Point, cond: Mapping[str, Any] | None = None) -> Prediction:
        """(D, eps) of the Gaussian at ``point`` for states ``x`` (batch, ...) under the
        condition ``cond``."""
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ArgumentError(
                "config",
                f"its analytic first step was fitted to samples of shape "
                f"{tuple(self.mean.shape)}, not {tuple(x.shape[1:])}",
                "tune it for this model's sample shape",
            )
        a, s = point.alpha, point.sigma
        mean = self.means(x, cond)
        var = self.var.to(x)
        noise = s * (x - a * mean) / (a * a * var + s * s)
        data = mean + (a / s) * var * noise
        return Prediction(data, noise)

    def record(self) -> dict[str, Any]:
        """The JSON-ready form (a field of a sampler config)."""
        out = {
            "shape": list(self.mean.shape),
            "mean": self.mean.flatten().tolist(),
            "var": self.var.flatten().tolist(),
        }
        if self.label_key is not None:
            out["label_key"] = self.label_key
            out["class_means"] = {str(c): m.flatten().tolist() for c, m in self.class_means.items()}
        return out

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> GaussianData:
        shape = tuple(int(n) for n in data["shape"])
        mean = torch.tensor(data["mean"], dtype=torch.float64)
        var = torch.tensor(data["var"], dtype=torch.float64)
        means = {
            int(c): torch.tensor(m, dtype=torch.float64)
            for c, m in data.get("class_means", {}).items()
        }
        if (
            mean.numel() != math.prod(shape)
            or var.shape != mean.shape
            or (var < 0).any()
            or any(m.shape != mean.shape for m in means.values())
        ):
            raise ArgumentError(
                "config", "its Gaussian needs a mean and a non-negative variance of its shape"
            )
        return cls(
            mean.view(shape),
            var.view(shape),
            data.get("label_key"),
            {c: m.view(shape) for c, m in means.items()},
        )


def _class_rows(
    mean: Tensor, class_means: dict[int, Tensor], labels: Tensor
) -> tuple[Tensor, Tensor]:
    """(batch, ...) each label's class mean, ``mean`` where its class has none; and whether
    it had one."""
    classes = sorted(class_means)
    labels = labels.cpu()
    row = torch.zeros(len(labels), dtype=torch.long)  # 0: the overall mean
    for k, c in enumerate(classes, 1):
        row[labels == c] = k
    table = torch.stack([mean, *(class_means[c] for c in classes)])
    return table[row], row > 0


def analytic_start(program: Program, gaussian: GaussianData) -> Program:
    """The program with its first model call replaced by the Gaussian's prediction: a
    program compiled for n + 1 evaluations then makes n model calls."""
    instructions = list(program.instructions)
    first = next(i for i, ins in enumerate(instructions) if isinstance(ins, Evaluate))
    ins = instructions[first]
    instructions[first] = Estimate(ins.state, ins.point, gaussian.predict)
    return replace(program, instructions=tuple(instructions))
