"""Where fitness runs: in this process, or on Ray actors of a local instance or a cluster.

The evaluator actors' count and resources come from the Ray cluster the run joins
(``ray.cluster_resources()``, ``ray.available_resources()``, ``ray.nodes()``), never from the
devices of the driver: a driver on a CPU head node gives every actor a GPU of the GPU nodes.
:func:`place` decides them and refuses, in one line, actors the cluster cannot hold.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from typing import Any

from sparsearch.base.errors import SparsearchError
from sparsearch.base.settings import require, setting

AUTO = -1.0  # worker_gpus: decided from the cluster


@dataclass(frozen=True)
class ClusterConfig:
    """``workers``: Ray evaluator actors (0: one per GPU of the cluster; on a machine of its own,
    one per accelerator when it has several, else evaluation stays in process); ``ray_address``: a
    Ray cluster to join (also ``$RAY_ADDRESS``); ``worker_gpus``/``worker_cpus``: what each actor
    holds; ``worker_timeout``: how long an actor may wait to be placed."""

    workers: int = setting(0, "Ray evaluator actors (0: one per GPU of the cluster when it has GPUs, one per node "
                           "when it has none; without --ray-address, one per accelerator on a multi-accelerator "
                           "machine, else in process)", metavar="N")
    ray_address: str | None = setting(None, "join this Ray cluster for evaluation ('auto': the running one; "
                                      "also $RAY_ADDRESS)", metavar="ADDRESS")
    worker_gpus: float = setting(AUTO, "GPUs of each evaluator actor (-1: 1 when the cluster has GPUs, else 0; "
                                 "a fraction below 1 shares a GPU)", metavar="G")
    worker_cpus: float = setting(1.0, "CPUs of each evaluator actor (also its torch threads)", metavar="C")
    worker_timeout: float = setting(120.0, "seconds an evaluator actor may take to be placed and started on the "
                                    "cluster before the run stops with an error", metavar="S")

    def __post_init__(self) -> None:
        require(self.workers >= 0, "workers", self.workers, ">= 0")
        g = self.worker_gpus
        require(g == AUTO or (0 <= g <= 1024 and (g < 1 or g == int(g))), "worker_gpus", g,
                "-1 (auto), a fraction below 1 or a whole number of GPUs")
        require(0 <= self.worker_cpus <= 4096, "worker_cpus", self.worker_cpus, "between 0 and 4096")
        require(self.worker_timeout > 0, "worker_timeout", self.worker_timeout, "> 0 seconds")

    @property
    def address(self) -> str | None:
        return self.ray_address or os.environ.get("RAY_ADDRESS")

    def actors(self, accelerators: int) -> int:
        """Evaluator actors on a machine of its own (``<= 1``: evaluate in process unless joining a cluster)."""
        return self.workers or (accelerators if accelerators > 1 else 1)

    def distributed(self, accelerators: int) -> bool:
        return self.actors(accelerators) > 1 or self.address is not None


@dataclass(frozen=True)
class Placement:
    """``actors`` evaluator actors of ``gpus`` GPUs and ``cpus`` CPUs each, to be started within
    ``timeout`` seconds."""

    actors: int
    gpus: float
    cpus: float
    timeout: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 512) -> str:
    """Join ``address`` (or ``$RAY_ADDRESS``; ``auto`` finds a running cluster), else start a local
    instance with a capped object store and no dashboard. Returns the cluster's address."""
    import logging

    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # no "Connected to Ray cluster" lines
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=object_store_mb * 2**20, **quiet)
    return ray.get_runtime_context().gcs_address


def _fits(resources: dict[str, float], gpus: float, cpus: float) -> float:
    """How many actors of ``gpus`` GPUs and ``cpus`` CPUs ``resources`` hold (inf: no limit)."""
    n = math.inf
    for name, need in (("GPU", gpus), ("CPU", cpus)):
        if need > 0:
            n = min(n, math.floor(resources.get(name, 0.0) / need + 1e-9))
    return n


def amount(x: float, unit: str) -> str:
    x = round(x, 3)
    return f"{int(x) if x == int(x) else x} {unit}{'' if x == 1 else 's'}"


def place(cfg: ClusterConfig, accelerators: int | None = None) -> Placement | None:
    """Where the run's evaluators go: ``None`` in this process, else a :class:`Placement` read from
    the cluster (joined, or a local instance started here). Raises :class:`SparsearchError` naming
    the cluster's free CPUs and GPUs when it cannot hold the actors asked for."""
    if accelerators is None:
        import torch

        accelerators = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    if not cfg.distributed(accelerators):
        return None
    import ray

    local = cfg.actors(accelerators)  # a local instance gets the CPUs its actors ask for
    connect(cfg.address, num_cpus=max(1, math.ceil(local * cfg.worker_cpus)))
    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = cfg.worker_gpus if cfg.worker_gpus != AUTO else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    cpus = cfg.worker_cpus
    # actors that fit: on the nodes one by one, and in what is free now (other jobs hold the rest)
    room = min(sum(min(_fits(n, gpus, cpus), 10**6) for n in nodes), _fits(free, gpus, cpus))
    if cfg.workers:
        actors = cfg.workers
    elif gpus > 0:  # one per GPU (per share of one), as many as fit
        actors = min(int(total.get("GPU", 0) // gpus + 1e-9), room)
    elif cfg.address is not None:
        actors = sum(1 for n in nodes if _fits(n, 0, cpus) >= 1) or 1
    else:
        actors = local
    if actors < 1 or actors > room:
        each = " and ".join(x for x in (amount(gpus, "GPU") if gpus else "", amount(cpus, "CPU") if cpus else "")
                            if x)
        have = (f"the cluster has {amount(free.get('GPU', 0), 'GPU')} and {amount(free.get('CPU', 0), 'CPU')} free "
                f"(of {amount(total.get('GPU', 0), 'GPU')} and {amount(total.get('CPU', 0), 'CPU')} on "
                f"{amount(len(nodes), 'node')})")
        if actors < 1:
            raise SparsearchError(f"--worker-gpus {cfg.worker_gpus:g}: no evaluator actor of {each} can be placed: "
                                  f"{have}")
        lead = f"--workers {actors}" if cfg.workers else f"one evaluator actor per {'GPU' if gpus else 'node'}"
        raise SparsearchError(f"{lead}: {amount(actors, 'evaluator actor')} of {each} each do not fit: {have}, "
                              f"{amount(room, 'such actor')} fit; lower --workers or --worker-gpus/--worker-cpus, "
                              "or add nodes")
    return Placement(actors, gpus, cpus, cfg.worker_timeout)


def node_id() -> str:
    """This process's Ray node id when Ray runs, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def device_entry(device: Any, cpus: int | None = None) -> dict[str, Any]:
    """Where work of this process runs on torch ``device``: ``node``, ``host``, ``gpus``
    (``cpus``), ``device``."""
    import torch

    device = torch.device(device)
    entry = {"node": node_id(), "host": socket.gethostname(), "gpus": 0 if device.type == "cpu" else 1}
    return entry | ({"cpus": cpus} if cpus is not None else {}) | {"device": str(device)}
