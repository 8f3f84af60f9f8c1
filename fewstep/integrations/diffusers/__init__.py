"""fewstep in diffusers: ``FewstepScheduler`` runs any fewstep solver (or a tuned sampler)
inside a pipeline, and ``network_model`` makes a pipeline's network a fewstep ``Model`` for
``fewstep.tune`` and ``fewstep.sample``."""

from .network import network_model
from .scheduler import FewstepScheduler

__all__ = ["FewstepScheduler", "network_model"]
