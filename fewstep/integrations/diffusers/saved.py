"""A diffusers pipeline saved on disk (the directory ``save_pretrained`` writes) as a fewstep
``Model``, for the command line: ``fewstep tune --model DIR`` and ``fewstep generate --model
DIR`` load its network and scheduler only, not its VAE or encoders. Pipelines whose network
takes no prompt: unconditional (DDPM, DDIM) and class-conditional (DiT); text-to-image needs
prompt embeddings, which a factory with ``network_model`` passes."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import diffusers
import torch

from ...errors import ArgumentError
from ...model import Model
from .network import network_model

#: the pipeline components that hold the denoising network, in the order they are looked for
NETWORKS = ("unet", "transformer")
#: the weight dtypes a saved network can be loaded in (``torch_dtype`` model option)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: what the command line cannot give a network: the inputs of text-to-image pipelines
_PROMPT_HINT = (
    "write a factory (package.module:factory) that encodes the prompts and returns "
    "fewstep.integrations.diffusers.network_model(...): README, Use with diffusers"
)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArgumentError("model", f"cannot read {path}: {err}") from err


def _component(index: dict[str, Any], key: str) -> str | None:
    """The class of a model_index.json component; None where absent (saved as nulls)."""
    return (index.get(key) or [None])[-1]


@lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over weight files' names and bytes, given as (path, size, mtime) so that an
    unchanged file is read once per process (identify and load both check it)."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SavedPipeline:
    """What a saved pipeline's files say about its network, read without loading weights."""

    path: Path
    network: str  # the component (and subfolder): unet or transformer
    network_class: str

    @classmethod
    def read(cls, path: str | Path) -> SavedPipeline:
        """The pipeline saved at ``path``; ``ArgumentError`` for one the command line cannot
        run (no network, a text encoder, or a network input fewstep cannot fill)."""
        root = Path(path)
        index = _json(root / "model_index.json")
        name = next((n for n in NETWORKS if _component(index, n)), None)
        if name is None or not _component(index, "scheduler"):
            raise ArgumentError(
                "model", f"{root} has no unet/transformer and scheduler in model_index.json"
            )
        if any(_component(index, k) for k in index if k.startswith("text_encoder")):
            raise ArgumentError(
                "model",
                f"{root} is a text-to-image pipeline ({index.get('_class_name')})",
                _PROMPT_HINT,
            )
        saved = cls(root, name, _component(index, name))
        saved._check_inputs()
        return saved

    @cached_property
    def config(self) -> dict[str, Any]:
        """The network's config.json."""
        return _json(self.path / self.network / "config.json")

    @cached_property
    def scheduler_config(self) -> dict[str, Any]:
        return _json(self.path / "scheduler" / "scheduler_config.json")

    def _network_type(self) -> type[torch.nn.Module]:
        kind = getattr(diffusers, self.network_class, None)
        if not (isinstance(kind, type) and issubclass(kind, torch.nn.Module)):
            raise ArgumentError(
                "model",
                f"{self.path}: diffusers {diffusers.__version__} has no model "
                f"{self.network_class!r}",
                "upgrade diffusers to the version that saved it",
            )
        return kind

    def _check_inputs(self) -> None:
        params = list(inspect.signature(self._network_type().forward).parameters.values())[2:]
        given = {"timestep", "return_dict"} | ({"class_labels"} if self.num_classes else set())
        needed = [
            p.name
            for p in params
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        missing = [n for n in needed if n not in given]
        if missing or self.config.get("caption_channels"):
            raise ArgumentError(
                "model",
                f"{self.path}: {self.network_class} needs {missing or ['caption embeddings']}",
                _PROMPT_HINT,
            )

    @property
    def num_classes(self) -> int | None:
        """Class count of a class-conditional network (DiT's labels, a UNet's class
        embeddings), else None."""
        if self.config.get("norm_type") == "ada_norm_zero":
            return self.config.get("num_embeds_ada_norm")
        return self.config.get("num_class_embeds")

    @property
    def null_class(self) -> int | None:
        """The unconditional label of classifier-free guidance: DiT's extra embedding row."""
        return self.num_classes if self.config.get("norm_type") == "ada_norm_zero" else None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One latent's shape, as the pipeline's ``prepare_latents`` makes it."""
        size = self.config.get("sample_size")
        if size is None:
            raise ArgumentError("shape", f"{self.path}'s network config has no sample_size")
        h, w = (size, size) if isinstance(size, int) else size
        return (int(self.config["in_channels"]), int(h), int(w))

    def weights_sha256(self) -> str:
        """sha256 over the network's weight files (names and bytes): the identity every
        process that loads the directory must find."""
        files = sorted(
            p for p in (self.path / self.network).iterdir() if p.suffix in (".safetensors", ".bin")
        )
        stats = [(str(p.resolve()), p.stat()) for p in files]
        return _digest(tuple((path, s.st_size, s.st_mtime_ns) for path, s in stats))

    def model(
        self, *, guidance_scale: float = 1.0, mu: float | None = None, torch_dtype: str = "float32"
    ) -> Model:
        """The network (weights in ``torch_dtype``, eval mode) as a fewstep ``Model`` with
        the schedule and prediction of the saved scheduler, and ``image_shape``,
        ``num_classes``, ``null_class`` and ``class_input`` for labels."""
        if torch_dtype not in TORCH_DTYPES:
            raise ArgumentError(
                "torch_dtype", f"unknown {torch_dtype!r}", f"one of {list(TORCH_DTYPES)}"
            )
        network = self._network_type().from_pretrained(
            self.path, subfolder=self.network, torch_dtype=TORCH_DTYPES[torch_dtype]
        )
        model = network_model(
            network.eval().requires_grad_(False),
            self.scheduler_config,
            guidance_scale=guidance_scale,
            mu=mu,
        )
        model.image_shape = self.image_shape
        model.num_classes = self.num_classes
        model.null_class = self.null_class
        model.class_input = "class_labels"
        return model
