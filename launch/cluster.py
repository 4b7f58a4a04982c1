"""Joining a Ray cluster, or starting a local Ray instance sized to this machine."""

from __future__ import annotations

import os


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
