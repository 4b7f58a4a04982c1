"""The fitness of a supernet, in this process or on a Ray actor pool, as the search engines see it,
and where it ran (:attr:`FitnessFactory.where`: the ``cluster`` block of a run's summary)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Protocol

import torch

from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.launch.cluster import ClusterConfig, Placement, device_entry, node_id, place
from sparsearch.launch.tokens import FILES
from sparsearch.base.settings import as_dict
from sparsearch.search.fitness import Fitness
from sparsearch.supernet.store import SupernetStore


class OpenFitness(Fitness, Protocol):
    nodes: list[str]

    def close(self) -> None: ...


class LocalFitness(Evaluator):
    """An :class:`~sparsearch.fitness.evaluator.Evaluator` on the run's own model."""

    @property
    def nodes(self) -> list[str]:
        return []

    def close(self) -> None:
        """Return the model to dense (it is pruned again by the next supernet, or reused)."""
        self.stitcher.apply(self.space.dense)


class FitnessFactory:
    """Opens the fitness of a supernet: in this process on ``model`` (the dense teacher is cached
    once and shared by every supernet of the run), or on ``cluster``'s Ray actors, each of which
    loads ``model_spec`` and the supernet itself and reads the run's tokens from ``run_dir``.
    ``built_on``: where the supernet was built when not in this process (a Ray task on a GPU node:
    :mod:`sparsearch.launch.remote`)."""

    def __init__(self, model, *, model_spec: str, run_dir: Path, tokens: torch.Tensor, fitness: FitnessConfig,
                 cluster: ClusterConfig, seed: int, trust_remote_code: bool = False, train: TrainConfig = TrainConfig(),
                 train_tokens: torch.Tensor | None = None, validation_tokens: torch.Tensor | None = None,
                 built_on: dict[str, Any] | None = None):
        self.model = model
        self.model_spec = model_spec
        self.trust_remote_code = trust_remote_code
        self.run_dir = run_dir  # where the actors read the run's token files (launch.tokens.FILES)
        self.tokens = tokens
        self.train = train
        self.train_tokens = train_tokens
        self.validation_tokens = validation_tokens
        self.fitness = fitness
        self.cluster = cluster
        self.seed = seed
        self.accelerators = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
        self.teacher: TeacherCache | None = None
        self._placement: Placement | None = None
        self.built_on = built_on
        self._workers: list[dict[str, Any]] | None = None

    @property
    def distributed(self) -> bool:
        return self.cluster.distributed(self.accelerators)

    @property
    def placement(self) -> Placement | None:
        """The evaluator actors' count and resources, read from the cluster once (:func:`place`;
        ``None``: in process). Later supernets of the run (Týr's rounds) reuse it."""
        if self._placement is None and self.distributed:
            self._placement = place(self.cluster, self.accelerators)
        return self._placement

    @property
    def workers(self) -> int:
        return self.placement.actors if self.distributed else 1

    def open(self, store: SupernetStore) -> OpenFitness:
        schedule = self.fitness.token_schedule
        if not self.distributed:
            ev = LocalFitness(self.model, store, self.tokens, schedule, topk=self.fitness.topk,
                              batch_size=self.fitness.batch_size, train=self.train, train_tokens=self.train_tokens,
                              seed=self.seed, teacher=self.teacher, validation_tokens=self.validation_tokens)
            self.teacher = ev.teacher
            self._workers = [device_entry(self._device, cpus=torch.get_num_threads())]
            return ev
        from sparsearch.fitness.pool import EvaluatorSpec, RayPool

        placement = self.placement
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")  # the actors load what we run
        files = {split: str(self.run_dir / name) for split, name in FILES.items()}
        spec = EvaluatorSpec(model=self.model_spec, supernet=str(store.path), tokens=files["fitness"],
                             dtype=dtype, trust_remote_code=self.trust_remote_code,
                             schedule=tuple((s.survivors, s.tokens, s.train_tokens) for s in schedule.stages),
                             topk=self.fitness.topk, batch_size=self.fitness.batch_size, seed=self.seed,
                             threads=placement.threads, train=as_dict(self.train),
                             train_tokens=files["training"] if self.train_tokens is not None else None,
                             validation_tokens=files["validation"] if self.validation_tokens is not None else None)
        # an actor's device is its own node's: the GPU Ray gave it, else its CPU (EvaluatorSpec.device "auto")
        pool = RayPool(spec, placement.actors, num_gpus=placement.gpus, num_cpus=placement.cpus,
                       timeout=placement.timeout)
        self._workers = pool.placed  # the pool's own list: an actor that replaces a dead one is seen here too
        return pool

    @property
    def _device(self):
        return next(self.model.parameters()).device


    @property
    def where(self) -> dict[str, Any] | None:
        """Where the fitness last opened runs, for the run's summary: ``{"workers": [{"node", "gpus",
        "cpus", ...}], "build": {"node", "gpus", "device", ...}}``, one entry per evaluator (the Ray
        actors, with their host, GPU ids and torch device; or this process), where the run's
        supernet was built (``built_on``, else this process), and the driver (``weights``: whether
        it holds the model's weights). ``node`` is a Ray node id, or the host
        name where no Ray runs. ``None`` before a fitness was opened."""
        if self._workers is None:
            return None
        build = self.built_on if self.built_on is not None else device_entry(self._device)
        driver = {"node": node_id(), "host": socket.gethostname(), "weights": self._device.type != "meta"}
        return {"workers": [dict(w) for w in self._workers], "build": dict(build), "driver": driver}
