"""The digits data: scikit-learn's 8x8 ``load_digits`` (shipped with scikit-learn, so no
download), split once into a fixed stratified train/test split, scaled to [-1, 1] and
upsampled bilinearly to 16x16. Every model trains on the train split only; the test split
is the held-out reference of the quality metrics."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArgumentError

IMAGE_SHAPE = (1, 16, 16)
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0

Split = Literal["train", "test", "all"]


class Digits(NamedTuple):
    """Images (n, 1, 16, 16) in [-1, 1], float32, and their labels (n,), int64."""

    images: Tensor
    labels: Tensor


def to_images(pixels: np.ndarray) -> Tensor:
    """scikit-learn's digit rows (n, 64), grey levels 0..16, as (n, 1, 16, 16) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return F.interpolate(x, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)


@lru_cache(maxsize=1)
def _split() -> tuple[Digits, Digits]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        bunch.data,
        bunch.target,
        test_size=TEST_FRACTION,
        stratify=bunch.target,
        random_state=SPLIT_SEED,
    )
    return (
        Digits(to_images(train_x), torch.as_tensor(train_y, dtype=torch.int64)),
        Digits(to_images(test_x), torch.as_tensor(test_y, dtype=torch.int64)),
    )


def load_digits(split: Split = "train") -> Digits:
    """The fixed split: ``"train"`` (1437 images), ``"test"`` (360, seen by no model) or
    ``"all"``. Returns copies, so callers may modify them."""
    if split not in ("train", "test", "all"):
        raise ArgumentError("split", f"unknown {split!r}", "one of 'train', 'test', 'all'")
    train, test = _split()
    if split == "all":
        return Digits(
            torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])
        )
    chosen = train if split == "train" else test
    return Digits(chosen.images.clone(), chosen.labels.clone())
