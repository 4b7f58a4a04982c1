"""The fitness of a supernet, in this process or on a Ray actor pool, as the search engines see it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.launch.cluster import ClusterConfig, connect
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
    loads ``model_spec`` and the supernet itself and reads the run's tokens from ``run_dir``."""

    def __init__(self, model, *, model_spec: str, run_dir: Path, tokens: torch.Tensor, fitness: FitnessConfig,
                 cluster: ClusterConfig, seed: int, trust_remote_code: bool = False, train: TrainConfig = TrainConfig(),
                 train_tokens: torch.Tensor | None = None, validation_tokens: torch.Tensor | None = None):
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

    @property
    def distributed(self) -> bool:
        return self.cluster.distributed(self.accelerators)

    @property
    def workers(self) -> int:
        return self.cluster.actors(self.accelerators)

    def open(self, store: SupernetStore) -> OpenFitness:
        schedule = self.fitness.token_schedule
        if not self.distributed:
            ev = LocalFitness(self.model, store, self.tokens, schedule, topk=self.fitness.topk,
                              batch_size=self.fitness.batch_size, train=self.train, train_tokens=self.train_tokens,
                              seed=self.seed, teacher=self.teacher, validation_tokens=self.validation_tokens)
            self.teacher = ev.teacher
            return ev
        from sparsearch.fitness.pool import EvaluatorSpec, RayPool

        connect(self.cluster.address, num_cpus=self.workers)
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")  # the actors load what we run
        files = {split: str(self.run_dir / name) for split, name in FILES.items()}
        spec = EvaluatorSpec(model=self.model_spec, supernet=str(store.path), tokens=files["fitness"],
                             dtype=dtype, trust_remote_code=self.trust_remote_code,
                             schedule=tuple((s.survivors, s.tokens, s.train_tokens) for s in schedule.stages),
                             topk=self.fitness.topk, batch_size=self.fitness.batch_size, seed=self.seed, threads=1,
                             train=as_dict(self.train),
                             train_tokens=files["training"] if self.train_tokens is not None else None,
                             validation_tokens=files["validation"] if self.validation_tokens is not None else None)
        # Ray's GPU resource counts CUDA devices; other accelerators run their actors on CPU slots
        gpus = 1 if self.accelerators and torch.accelerator.current_accelerator().type == "cuda" else 0
        return RayPool(spec, self.workers, num_gpus=gpus, num_cpus=0 if gpus else 1)
