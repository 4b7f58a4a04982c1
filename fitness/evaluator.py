"""The evaluator: one loaded model, a supernet, a teacher cache; it scores genomes at a stage.

Call order::

    ev = Evaluator(model, store, fitness_tokens, schedule)   # caches the dense teacher, wraps the model
    ev.evaluate(genome, stage)                               # stitch, [train a copy], score -> float
    ev.evaluate_many(genomes, stage, on_result)              # the search engines' Fitness interface

Scores are mean per-token KL(dense || candidate) in nats on ``stage.tokens`` fitness tokens
(lower is better): for sample 0 the first rows of the token pool, for another sample a seeded
random choice of its rows (a stage's rows are a prefix of the next stage's), so that a search can
score every generation on fresh data. The same object is what a Ray actor holds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from sparsearch.fitness.config import TrainConfig
from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.fitness.teacher import TeacherCache
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
        self.teacher = teacher or TeacherCache.compute(model, tokens, k=topk, batch_size=batch_size)
        self.stitcher = Stitcher(model, store)
        self.model = model
        self.space = self.stitcher.space
        self.stats = {"evaluations": 0, "stitch_s": 0.0, "train_s": 0.0, "score_s": 0.0}

    @property
    def survivors(self) -> tuple[int, ...]:
        return tuple(s.survivors for s in self.schedule.stages)

    def evaluate_many(
        self, genomes: Sequence[Genome], stage: int, on_result: Callable[[int, float], None] | None = None,
        sample: int = 0,
    ) -> list[float]:
        scores = []
        for i, g in enumerate(genomes):
            scores.append(self.evaluate(g, stage, sample))
            if on_result is not None:
                on_result(i, scores[-1])
        return scores

    def rows(self, stage: int) -> int:
        return math.ceil(self.schedule.stages[stage].tokens / self.teacher.tokens.shape[1])

    def sample_rows(self, stage: int, sample: int = 0) -> torch.Tensor:
        """The pool rows that ``stage`` of ``sample`` scores on."""
        n = self.rows(stage)
        if sample == 0:
            return torch.arange(n)
        pool = self.teacher.tokens.shape[0]
        return torch.randperm(pool, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + sample))[:n]

    def evaluate(self, genome: Genome, stage: int = 0, sample: int = 0) -> float:
        t0 = time.perf_counter()
        self.stitcher.apply(genome)
        t1 = time.perf_counter()
        model = self.model
        st = self.schedule.stages[stage]
        if st.train_tokens:
            model = train_copy(model, self.train_tokens, st.train_tokens, self.train_cfg, seed=self.seed)
        t2 = time.perf_counter()
        score = self.score(model, self.sample_rows(stage, sample))
        t3 = time.perf_counter()
        self.stats["evaluations"] += 1
        self.stats["stitch_s"] += t1 - t0
        self.stats["train_s"] += t2 - t1
        self.stats["score_s"] += t3 - t2
        return score

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
