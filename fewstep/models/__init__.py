"""Trained models that ship with fewstep: small digits generators and a digits classifier.

Each was trained by ``fewstep train NAME`` (``fewstep.models.train``) on the train split of
scikit-learn's 8x8 digits (upsampled to 16x16, in [-1, 1]); the weights, their sha256 and
the training record live in ``fewstep/models/weights``. No download is ever needed.

    model = fewstep.models.load("digits-unet", guidance_scale=2.0)
    y = torch.arange(10)
    x = fewstep.sample(model, fewstep.randn((10, *model.image_shape), seed=0), nfe=10,
                       cond={"y": y}, uncond={"y": torch.full_like(y, model.null_class)})

Generators (``available()``):

- ``digits-unet``: UNet, epsilon prediction, Stable Diffusion's ``scaled_linear`` VP schedule;
- ``digits-dit``: diffusion transformer (adaLN-Zero; its blocks are ``network.blocks``),
  v prediction, the same schedule;
- ``digits-flow``: UNet, rectified flow (``FlowSchedule()``), velocity prediction.

All are class-conditional: ``y`` holds labels 0-9, or ``null_class`` (10) for the
unconditional branch of classifier-free guidance; leaving ``y`` out means unconditional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError
from ..model import Model
from .classifier import Classifier
from .data import IMAGE_SHAPE, NUM_CLASSES, load_digits
from .specs import CLASSIFIER, GENERATORS, build_network, build_schedule
from .store import WEIGHTS_DIR, WeightsError, read

__all__ = [
    "WEIGHTS_DIR",
    "Classifier",
    "TrainedModel",
    "WeightsError",
    "available",
    "load",
    "load_classifier",
    "load_digits",
]


class TrainedModel(Model):
    """A ``fewstep.Model`` around a shipped network, called as ``fn(x, t, y=labels)``.

    Attributes beyond ``Model``'s: ``name``; ``network`` (the ``nn.Module``, eval mode,
    float32, parameters frozen); ``image_shape`` (1, 16, 16); ``num_classes`` (10);
    ``null_class`` (10, the label of the unconditional branch); ``info`` (the json record:
    recipe, checksum, training time, held-out losses).
    """

    def __init__(self, name: str, network: nn.Module, info: dict[str, Any], **options: Any):
        recipe = info["recipe"]
        super().__init__(
            network,
            build_schedule(recipe["schedule"]),
            recipe["prediction"],
            dtype=torch.float32,
            **options,
        )
        self.name = name
        self.network = network
        self.info = info
        self.image_shape = IMAGE_SHAPE
        self.num_classes = NUM_CLASSES
        self.null_class = NUM_CLASSES


def available() -> tuple[str, ...]:
    """The names ``load`` accepts."""
    return GENERATORS


def _network(name: str, directory: str | Path | None) -> tuple[nn.Module, dict[str, Any]]:
    state, info = read(name, directory)
    recipe = info["recipe"]
    network = build_network(recipe["architecture"], recipe["network"])
    network.load_state_dict(state)
    return network.eval().requires_grad_(False), info


def load(
    name: str,
    *,
    guidance_scale: float = 1.0,
    directory: str | Path | None = None,
    **model_options: Any,
) -> TrainedModel:
    """A shipped generator as a ready ``fewstep.Model`` (see ``TrainedModel``).

    Args:
        name: one of ``available()``.
        guidance_scale: classifier-free guidance scale; with a scale other than 1, pass
            ``uncond={"y": null labels}`` to ``fewstep.sample``.
        directory: load from another weights directory (e.g. ``fewstep train``'s output).
        model_options: further ``fewstep.Model`` options (``guidance_rescale``,
            ``thresholding``).
    """
    if name not in GENERATORS:
        raise ArgumentError(
            "name",
            f"unknown model {name!r}",
            f"one of {list(GENERATORS)}; the classifier is load_classifier()",
        )
    network, info = _network(name, directory)
    return TrainedModel(name, network, info, guidance_scale=guidance_scale, **model_options)


def load_classifier(directory: str | Path | None = None) -> Classifier:
    """The shipped digits classifier (eval mode, frozen); its json record is ``.info``."""
    network, info = _network(CLASSIFIER, directory)
    network.info = info
    return network
