"""The peers' samplers, loaded for side-by-side tests: diffusers and k-diffusion.

``import k_diffusion`` pulls torchvision and scikit-image through unrelated modules, so its
``sampling.py`` is loaded by file path, with the one helper it takes from ``utils``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module, or skip the test if k-diffusion is missing."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make test installs it)")
    name = "_kd_peer.sampling"
    if name in sys.modules:
        return sys.modules[name]
    package = types.ModuleType("_kd_peer")
    package.__path__ = []
    utils = types.ModuleType("_kd_peer.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules["_kd_peer"] = package
    sys.modules["_kd_peer.utils"] = utils
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def diffusers():
    return pytest.importorskip("diffusers")
