"""Evaluator pools: the same ``evaluate_many`` interface in process or over Ray actors.

Each Ray actor builds its own :class:`~fitness.evaluator.Evaluator` from an
:class:`EvaluatorSpec` — it loads the model and opens the supernet from paths and computes its own
teacher cache — so nothing large crosses the object store. The pool keeps one evaluation in flight
per actor; when an actor dies mid-evaluation it is replaced and its genome resubmitted, so a search
ends with the same evaluations as without the failure.

Call order::

    pool = RayPool(spec, workers=2)          # or InProcessPool(spec)
    pool.evaluate_many(genomes, stage, on_result)
    pool.close()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sparsearch.search.space import Genome


@dataclass(frozen=True)
class EvaluatorSpec:
    """What an evaluator is built from (paths and plain values only)."""

    model: str
    supernet: str
    tokens: str  # a safetensors file with a "tokens" tensor (N x T)
    schedule: tuple[tuple[int, int, int], ...]
    dtype: str = "auto"
    device: str = "auto"  # a torch device name, or "auto": the accelerator if any
    topk: int = 64
    batch_size: int = 4
    seed: int = 0
    threads: int = 0  # torch threads in the evaluator (0 = torch's default)
    trust_remote_code: bool = False  # run code shipped with the model (the user said so)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of training-aware stages
    train_tokens: str | None = None  # a safetensors file with the "tokens" they train on
    validation_tokens: str | None = None  # a safetensors file with the validation split's "tokens"


def build_evaluator(spec: EvaluatorSpec):
    import torch

    from sparsearch.base.tensorfiles import read_tensors
    from sparsearch.fitness.evaluator import Evaluator
    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.fitness.config import TrainConfig
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.store import SupernetStore

    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.device != "auto":
        device = torch.device(spec.device)
    else:  # the machine's accelerator (CUDA, ...) if it has one, else where the model loads
        device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    model, _ = load_model(spec.model, dtype=spec.dtype, device=device, trust_remote_code=spec.trust_remote_code)
    def read(path: str | None):
        fix = "the run directory must be on storage every node sees"
        return read_tensors(path, "run tokens", fix, need=["tokens"])[0]["tokens"] if path else None

    schedule = TokenSchedule.of(spec.schedule)
    return Evaluator(model, SupernetStore.open(spec.supernet), read(spec.tokens), schedule, topk=spec.topk,
                     batch_size=spec.batch_size, seed=spec.seed, train=TrainConfig(**spec.train),
                     train_tokens=read(spec.train_tokens), validation_tokens=read(spec.validation_tokens))


class InProcessPool:
    """One evaluator in this process (the default for tests, CPUs and tiny runs)."""

    def __init__(self, spec: EvaluatorSpec | None = None, *, evaluator=None):
        self.evaluator = evaluator if evaluator is not None else build_evaluator(spec)
        self.survivors = self.evaluator.survivors
        self.validates = self.evaluator.validates

    def evaluate_many(self, genomes: Sequence[Genome], stage: int,
                      on_result: Callable[[int, float], None] | None = None, sample: int = 0) -> list[float]:
        return self.evaluator.evaluate_many(genomes, stage, on_result, sample)

    def close(self) -> None:
        pass


class _Actor:
    def __init__(self, spec: EvaluatorSpec):
        self.evaluator = build_evaluator(spec)

    def evaluate(self, genome: list[int], stage: int, sample: int, base: list[int] | None = None) -> tuple[float, str]:
        import ray

        base = tuple(base) if base is not None else None
        return self.evaluator.evaluate(tuple(genome), stage, sample, base), ray.get_runtime_context().get_node_id()


class RayPool:
    """``workers`` Ray actors, each with ``num_gpus`` GPUs and ``num_cpus`` CPUs."""

    def __init__(self, spec: EvaluatorSpec, workers: int, *, num_gpus: float = 0, num_cpus: float = 1):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayPool needs ray.init() first (see launch.cluster.connect)")
        self.spec = spec
        self.survivors = tuple(s[0] for s in spec.schedule)
        self.validates = spec.validation_tokens is not None
        self._cls = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0)(_Actor)
        self.actors = [self._cls.remote(spec) for _ in range(workers)]
        self.nodes: list[str] = []  # node id of every finished evaluation, in completion order
        self.replaced = 0

    def evaluate_many(self, genomes: Sequence[Genome], stage: int,
                      on_result: Callable[[int, float], None] | None = None, sample: int = 0) -> list[float]:
        import ray
        from ray.exceptions import RayActorError

        from sparsearch.fitness.prefix import choose_base

        # a batch that shares a long prefix is scored from one base's states on each actor
        from sparsearch.search.fitness import VALIDATION

        trains = stage != VALIDATION and self.spec.schedule[stage][2]
        base = None if trains else choose_base([tuple(g) for g in genomes])
        base = list(base) if base is not None else None
        scores: list[float | None] = [None] * len(genomes)
        todo = list(range(len(genomes)))
        running: dict[Any, tuple[int, int]] = {}  # ref -> (genome index, actor slot)
        idle = list(range(len(self.actors)))
        while todo or running:
            while todo and idle:
                i, slot = todo.pop(0), idle.pop(0)
                running[self.actors[slot].evaluate.remote(list(genomes[i]), stage, sample, base)] = (i, slot)
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            i, slot = running.pop(ref)
            try:
                score, node = ray.get(ref)
            except RayActorError:  # the actor died: replace it and evaluate the genome again
                self.actors[slot] = self._cls.remote(self.spec)
                self.replaced += 1
                todo.insert(0, i)
                idle.append(slot)
                continue
            scores[i] = score
            self.nodes.append(node)
            idle.append(slot)
            if on_result is not None:
                on_result(i, score)
        return scores  # type: ignore[return-value]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
