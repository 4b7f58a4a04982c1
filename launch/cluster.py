"""Where fitness runs: in this process, or on Ray actors of a local instance or a cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sparsearch.base.settings import require, setting


@dataclass(frozen=True)
class ClusterConfig:
    """``workers``: Ray evaluator actors (0: one per accelerator on machines with several, else
    evaluation stays in process); ``ray_address``: a Ray cluster to join (also ``$RAY_ADDRESS``)."""

    workers: int = setting(0, "Ray evaluator actors (0: one per accelerator on a multi-accelerator machine, "
                           "else in process)", metavar="N")
    ray_address: str | None = setting(None, "join this Ray cluster for evaluation ('auto': the running one; "
                                      "also $RAY_ADDRESS)", metavar="ADDRESS")

    def __post_init__(self) -> None:
        require(self.workers >= 0, "workers", self.workers, ">= 0")

    @property
    def address(self) -> str | None:
        return self.ray_address or os.environ.get("RAY_ADDRESS")

    def actors(self, accelerators: int) -> int:
        """Evaluator actors to start (``<= 1``: evaluate in process unless joining a cluster)."""
        return self.workers or (accelerators if accelerators > 1 else 1)

    def distributed(self, accelerators: int) -> bool:
        return self.actors(accelerators) > 1 or self.address is not None


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 512) -> str:
    """Join ``address`` (or ``$RAY_ADDRESS``; ``auto`` finds a running cluster), else start a local
    instance with a capped object store and no dashboard. Returns the cluster's address."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     object_store_memory=object_store_mb * 2**20)
    return ray.get_runtime_context().gcs_address
