"""The evaluator: one loaded model, a supernet, a teacher cache; it scores genomes at a stage.

Call order::

    ev = Evaluator(model, store, fitness_tokens, schedule)   # caches the dense teacher, wraps the model
    ev.evaluate(genome, stage)                               # stitch, [train a copy], score -> float
    ev.evaluate_many(genomes, stage, on_result)              # the search engines' Fitness interface
    ev.evaluate(genome, stage, base=other)                   # from the states of genome ``other`` (fitness.prefix)

Scores are mean per-token KL(dense || candidate) in nats on ``stage.tokens`` fitness tokens
(lower is better): for sample 0 the first rows of the token pool, for another sample a seeded
random choice of its rows (a stage's rows are a prefix of the next stage's), so that a search can
score every generation on fresh data. A batch of genomes that share long prefixes with one base
genome (the knapsack's replace-one-unit probes share the dense one) is scored from the base's
hidden states (:mod:`sparsearch.fitness.prefix`), with the same scores as full passes. The same
object is what a Ray actor holds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from sparsearch.fitness.config import TrainConfig
from sparsearch.fitness.prefix import PrefixStates, choose_base, first_difference, run_from
from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.search.fitness import VALIDATION
from sparsearch.fitness.training import train_copy
from sparsearch.search.space import Genome
from sparsearch.supernet.stitch import Stitcher
from sparsearch.supernet.store import SupernetStore


class Evaluator:
    def __init__(
        self,
        model: nn.Module,
        store: SupernetStore,
        tokens: torch.Tensor,
        schedule: TokenSchedule,
        *,
        topk: int = 64,
        batch_size: int = 4,
        train: TrainConfig | None = None,
        train_tokens: torch.Tensor | None = None,
        seed: int = 0,
        teacher: TeacherCache | None = None,
        prefix_memory: int = 2 << 30,
        validation_tokens: torch.Tensor | None = None,
    ):
        seqlen = tokens.shape[1]
        need = math.ceil(schedule.max_tokens / seqlen)
        if tokens.shape[0] < need:
            raise ValueError(f"the schedule needs {schedule.max_tokens} fitness tokens; got {tokens.numel()}")
        if any(s.train_tokens for s in schedule.stages) and train_tokens is None:
            raise ValueError("a schedule with training stages needs train_tokens")
        self.schedule = schedule
        self.batch_size = batch_size
        self.train_cfg = train or TrainConfig()
        self.train_tokens = train_tokens
        self.seed = seed
        self.pool_rows = tokens.shape[0]
        self.validation_rows = 0 if validation_tokens is None else validation_tokens.shape[0]
        if teacher is None:  # the validation rows follow the pool's in one teacher cache
            both = tokens if validation_tokens is None else torch.cat([tokens, validation_tokens])
            teacher = TeacherCache.compute(model, both, k=topk, batch_size=batch_size)
        if teacher.tokens.shape[0] != self.pool_rows + self.validation_rows:
            raise ValueError("the teacher cache must cover the fitness pool and the validation rows")
        self.teacher = teacher
        self.stitcher = Stitcher(model, store)
        self.model = model
        self.space = self.stitcher.space
        self.prefix_memory = prefix_memory  # bytes of base states held in memory (more are spilled to disk)
        self._prefix: tuple[tuple, PrefixStates] | None = None  # (base, stage, sample) and its states
        self.stats = {"evaluations": 0, "stitch_s": 0.0, "train_s": 0.0, "score_s": 0.0, "prefix_s": 0.0,
                      "from_prefix": 0}

    @property
    def survivors(self) -> tuple[int, ...]:
        return tuple(s.survivors for s in self.schedule.stages)

    @property
    def validates(self) -> bool:
        return self.validation_rows > 0

    def evaluate_many(
        self, genomes: Sequence[Genome], stage: int, on_result: Callable[[int, float], None] | None = None,
        sample: int = 0,
    ) -> list[float]:
        base = self.base_for(genomes, stage)
        scores = []
        for i, g in enumerate(genomes):
            scores.append(self.evaluate(g, stage, sample, base=base))
            if on_result is not None:
                on_result(i, scores[-1])
        return scores

    def base_for(self, genomes: Sequence[Genome], stage: int) -> Genome | None:
        """The base genome whose states ``genomes`` are scored from at ``stage`` (None: full passes;
        always for stages that train a candidate first)."""
        if self._train_tokens(stage):
            return None
        return choose_base([tuple(int(x) for x in g) for g in genomes])

    def _train_tokens(self, stage: int) -> int:
        return 0 if stage == VALIDATION else self.schedule.stages[stage].train_tokens

    def rows(self, stage: int) -> int:
        if stage == VALIDATION:
            return self.validation_rows
        return math.ceil(self.schedule.stages[stage].tokens / self.teacher.tokens.shape[1])

    def sample_rows(self, stage: int, sample: int = 0) -> torch.Tensor:
        """The teacher rows that ``stage`` of ``sample`` scores on (:data:`VALIDATION`: every
        validation row, whatever the sample)."""
        if stage == VALIDATION:
            if not self.validation_rows:
                raise ValueError("this evaluator has no validation tokens")
            return torch.arange(self.pool_rows, self.pool_rows + self.validation_rows)
        n = self.rows(stage)
        if sample == 0:
            return torch.arange(n)
        return torch.randperm(self.pool_rows, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + sample))[:n]

    def evaluate(self, genome: Genome, stage: int = 0, sample: int = 0, base: Genome | None = None) -> float:
        """The score of ``genome``; with ``base``, computed from the hidden states of the base genome
        on the same rows (computed once, kept until another base, stage or sample is asked for)."""
        t0 = time.perf_counter()
        train_tokens = self._train_tokens(stage)
        states = None
        if base is not None and not train_tokens:
            states = self._states(tuple(int(x) for x in base), stage, sample)
        t1 = time.perf_counter()
        self.stitcher.apply(genome)
        t2 = time.perf_counter()
        model = self.model
        if train_tokens:
            model = train_copy(model, self.train_tokens, train_tokens, self.train_cfg, seed=self.seed)
        t3 = time.perf_counter()
        rows = self.sample_rows(stage, sample)
        if states is not None:
            score = self._score_from(states, first_difference(tuple(int(x) for x in genome), base), rows)
            self.stats["from_prefix"] += 1
        else:
            score = self.score(model, rows)
        t4 = time.perf_counter()
        self.stats["evaluations"] += 1
        self.stats["prefix_s"] += t1 - t0
        self.stats["stitch_s"] += t2 - t1
        self.stats["train_s"] += t3 - t2
        self.stats["score_s"] += t4 - t3
        return score

    @torch.no_grad()
    def _states(self, base: Genome, stage: int, sample: int) -> PrefixStates:
        key = (base, stage, sample)
        if self._prefix is None or self._prefix[0] != key:
            self._prefix = None  # free the old states first
            self.stitcher.apply(base)
            rows = self.sample_rows(stage, sample)
            batches = [self.teacher.tokens[rows[i : i + self.batch_size]] for i in range(0, len(rows), self.batch_size)]
            self._prefix = (key, PrefixStates(self.stitcher.adapter.layers, self.model, batches,
                                              memory_bytes=self.prefix_memory))
        return self._prefix[1]

    @torch.no_grad()
    def _score_from(self, states: PrefixStates, unit: int, rows: torch.Tensor) -> float:
        """:meth:`score` of the stitched model, run from the base's states entering ``unit``."""
        device = next(self.model.parameters()).device
        layers = self.stitcher.adapter.layers
        total, count = 0.0, 0
        for b, start in enumerate(range(0, len(rows), self.batch_size)):
            index = rows[start : start + self.batch_size]
            logits = run_from(self.model, layers, unit, states.state(b, unit, device), states.kwargs[b])
            kl = self.teacher.kl(index, logits)
            total += kl.sum().item()
            count += kl.numel()
        return total / count

    @torch.no_grad()
    def score(self, model: nn.Module, rows: torch.Tensor | int) -> float:
        """Mean per-token top-k KL of ``model`` against the cached teacher on the pool ``rows``
        (indices, or a count of first rows)."""
        if isinstance(rows, int):
            rows = torch.arange(rows)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(rows), self.batch_size):
            index = rows[start : start + self.batch_size]
            logits = model(input_ids=self.teacher.tokens[index].to(device), use_cache=False).logits
            kl = self.teacher.kl(index, logits)
            total += kl.sum().item()
            count += kl.numel()
        return total / count
