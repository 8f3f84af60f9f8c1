"""Digests of tensors and conditioning inputs by content: the keys of fewstep's in-memory
caches (teachers, step costs, exact references)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor


def content_digest(value) -> str:
    """A digest of noises, targets or conditioning inputs by content (tensors by their
    bytes, shape and dtype, any dtype; mappings item by item; else their repr)."""
    h = hashlib.sha1()
    if isinstance(value, Tensor):
        h.update(repr((tuple(value.shape), value.dtype)).encode())
        h.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        for k in sorted(value, key=str):
            h.update(repr(k).encode() + content_digest(value[k]).encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()
