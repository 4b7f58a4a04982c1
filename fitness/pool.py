"""Evaluator pools: the same ``evaluate_many`` interface in process or over Ray actors.

Each Ray actor builds its own :class:`~fitness.evaluator.Evaluator` from an
:class:`EvaluatorSpec` — it loads the model and opens the supernet from paths and computes its own
teacher cache — so nothing large crosses the object store. The pool keeps one evaluation in flight
per actor; when an actor dies mid-evaluation it is replaced and its genome resubmitted, so a search
ends with the same evaluations as without the failure. As soon as it is placed, every actor hashes
the files it will read (the supernet's manifest, the run's token files, a model folder's config:
:func:`shared_files`) and
the driver compares them with its own, so a node that does not see the driver's storage is one
line naming the node and the file, before any model loads.

Call order::

    pool = RayPool(spec, workers=2)          # or InProcessPool(spec)
    pool.evaluate_many(genomes, stage, on_result)
    pool.close()
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sparsearch.base.errors import SparsearchError
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


def shared_files(spec: EvaluatorSpec) -> dict[str, str | None]:
    """The SHA-256 of every file an evaluator of ``spec`` reads from shared storage (the supernet's
    ``manifest.json``, which holds every variant's hash, the run's token files, and a model given
    as a path: its ``config.json``, or its .gguf file), ``None`` for one it cannot read; keyed by
    path."""
    paths = [os.path.join(spec.supernet, "manifest.json"), spec.tokens, spec.train_tokens, spec.validation_tokens]
    if os.path.isabs(spec.model):  # a model folder (or file) rather than an alias or a hub id
        paths.append(os.path.join(spec.model, "config.json") if not spec.model.endswith(".gguf") else spec.model)
    out: dict[str, str | None] = {}
    for path in filter(None, paths):
        try:
            with open(path, "rb") as f:
                out[path] = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            out[path] = None
    return out


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
    """One evaluator on a Ray worker. The constructor does nothing, so that an actor answers
    :meth:`where` as soon as it is placed; the model loads in :meth:`load` (or the first evaluation)."""

    def __init__(self, spec: EvaluatorSpec):
        self.spec = spec
        self.evaluator = None

    def where(self) -> dict[str, Any]:
        """The node, host, resources and GPU ids Ray gave this actor, and the hashes of the shared
        files it sees (:func:`shared_files`)."""
        import socket

        import ray

        ctx = ray.get_runtime_context()
        held = ctx.get_assigned_resources()
        return {"node": ctx.get_node_id(), "host": socket.gethostname(), "gpus": _number(held.get("GPU", 0)),
                "cpus": _number(held.get("CPU", 0)), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "files": shared_files(self.spec)}

    def load(self) -> str:
        """Build the evaluator (once); returns the torch device it runs on."""
        if self.evaluator is None:
            self.evaluator = build_evaluator(self.spec)
        return str(next(self.evaluator.model.parameters()).device)

    def evaluate(self, genome: list[int], stage: int, sample: int, base: list[int] | None = None) -> tuple[float, str]:
        import ray

        self.load()
        base = tuple(base) if base is not None else None
        return self.evaluator.evaluate(tuple(genome), stage, sample, base), ray.get_runtime_context().get_node_id()


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 4)


def ray_error_line(e: BaseException) -> str:
    """One line for a Ray actor or task error: the original exception's last line when it has one."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(e)):
        e = cause
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b[^:]*: ", line):
            return line
    return " ".join(lines) or type(e).__name__


def _hint(text: str) -> str:
    if "No module named 'sparsearch'" in text:
        return (text + " (the Python that runs `ray start` on that node lacks the project: start Ray from its "
                "virtual environment, see launch/cluster.yaml)")
    return text


class RayPool:
    """``workers`` Ray actors, each with ``num_gpus`` GPUs and ``num_cpus`` CPUs.

    Every actor must be placed on the cluster (answer :meth:`_Actor.where`) within ``timeout``
    seconds, at the start and when it replaces a dead one, else :class:`SparsearchError` names what
    was asked and what is free. A genome whose evaluation kills its actor is evaluated again on a
    new actor, at most ``retries`` times. :attr:`placed` says where each actor runs (node, host,
    GPUs, CPUs, GPU ids, torch device)."""

    def __init__(self, spec: EvaluatorSpec, workers: int, *, num_gpus: float = 0, num_cpus: float = 1,
                 timeout: float = 120.0, retries: int = 3, expected: dict[str, str | None] | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayPool needs ray.init() first (see launch.cluster.connect)")
        self.spec = spec
        self.survivors = tuple(s[0] for s in spec.schedule)
        self.validates = spec.validation_tokens is not None
        self.num_gpus, self.num_cpus, self.timeout, self.retries = num_gpus, num_cpus, timeout, retries
        self.expected = shared_files(spec) if expected is None else expected  # what this process sees
        self._cls = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0)(_Actor)
        self.actors, self.placed = self._place(workers)
        self.nodes: list[str] = []  # node id of every finished evaluation, in completion order
        self.replaced = 0
        try:
            for slot, device in enumerate(self._get([a.load.remote() for a in self.actors], "load the model")):
                self.placed[slot]["device"] = device
        except BaseException:
            self.close()
            raise

    def _each(self) -> str:
        parts = [f"{_number(self.num_gpus)} GPU" if self.num_gpus else "", f"{_number(self.num_cpus)} CPU"
                 if self.num_cpus else ""]
        return " and ".join(p for p in parts if p) or "no resources"

    def _place(self, count: int) -> tuple[list[Any], list[dict[str, Any]]]:
        """``count`` new actors and where they run, once all are placed (or an error line)."""
        import ray

        actors = [self._cls.remote(self.spec) for _ in range(count)]
        refs = [a.where.remote() for a in actors]
        try:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
            if pending:
                free, total = ray.available_resources(), ray.cluster_resources()
                have = ", ".join(f"{_number(free.get(k, 0))} of {_number(total.get(k, 0))} {k}s free"
                                 for k in ("GPU", "CPU"))
                raise SparsearchError(
                    f"{len(pending)} of {count} evaluator actors of {self._each()} each were not placed within "
                    f"{self.timeout:g} s ({have} on the cluster after the others started): lower --workers or "
                    "--worker-gpus/--worker-cpus, add nodes, or wait longer with --worker-timeout")
            placed = self._get(refs, "start")
            for where in placed:
                self._require_same_files(where)
            return actors, placed
        except BaseException:
            for a in actors:
                ray.kill(a)
            raise

    def _require_same_files(self, where: dict[str, Any]) -> None:
        """Refuse an actor that does not see the driver's files, or sees other contents there."""
        seen = where.pop("files")
        for path, digest in self.expected.items():
            if seen.get(path) != digest:
                what = "cannot read" if seen.get(path) is None else "sees another file at"
                raise SparsearchError(
                    f"evaluator on node {where['host']} ({where['node'][:12]}) {what} {path}: a model folder, the "
                    "supernet and the run directory must be on storage every node sees, with the same contents (docs/cluster.md)")

    def _get(self, refs: list[Any], what: str) -> list[Any]:
        """``ray.get(refs)``; an actor that fails to start, or a SparsearchError in it, is one line."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(refs)
        except RayActorError as e:
            raise SparsearchError(f"an evaluator actor died before it could {what}: {_hint(ray_error_line(e))}") from None
        except RayTaskError as e:
            if isinstance(e.cause, SparsearchError):
                raise SparsearchError(f"evaluator actor: {_hint(ray_error_line(e))}") from None
            raise

    def evaluate_many(self, genomes: Sequence[Genome], stage: int,
                      on_result: Callable[[int, float], None] | None = None, sample: int = 0) -> list[float]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from sparsearch.fitness.prefix import choose_base

        # a batch that shares a long prefix is scored from one base's states on each actor
        from sparsearch.search.fitness import VALIDATION

        trains = stage != VALIDATION and self.spec.schedule[stage][2]
        base = None if trains else choose_base([tuple(g) for g in genomes])
        base = list(base) if base is not None else None
        scores: list[float | None] = [None] * len(genomes)
        deaths = [0] * len(genomes)
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
            except RayTaskError as e:  # the evaluation raised (a replacement's model failed to load, ...)
                if isinstance(e.cause, SparsearchError):
                    raise SparsearchError(f"evaluator actor: {_hint(ray_error_line(e))}") from None
                raise
            except RayActorError as e:  # the actor died: replace it and evaluate the genome again
                deaths[i] += 1
                if deaths[i] > self.retries:
                    raise SparsearchError(f"evaluator actors died {deaths[i]} times evaluating one genome (the last: "
                                          f"{_hint(ray_error_line(e))}); see the Ray logs of node {self.placed[slot]['host']}"
                                          ) from None
                [self.actors[slot]], [self.placed[slot]] = self._place(1)
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
