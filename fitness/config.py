"""Typed, validated configuration of the fitness: stages, teacher cache, batch size."""

from __future__ import annotations

from dataclasses import dataclass

from sparsearch.fitness.schedule import PRESETS, TokenSchedule
from sparsearch.search.config import require, setting
from sparsearch.search.errors import ConfigError

DEFAULT_SCHEDULE = "4:512,2:1024,1:2048"


@dataclass(frozen=True)
class FitnessConfig:
    """``schedule``: stages ``survivors:tokens[:train_tokens]`` (or a preset name); ``topk``:
    teacher logits kept per token; ``batch_size``: sequences per scoring forward pass; ``pool``:
    the fitness tokens drawn from the calibration source, as a multiple of the last stage's."""

    schedule: str = setting(DEFAULT_SCHEDULE, "fitness stages survivors:tokens[:train_tokens],... or a preset: "
                            + ", ".join(PRESETS), metavar="STAGES")
    topk: int = setting(64, "teacher logits kept per token for the KL")
    batch_size: int = setting(4, "sequences per scoring forward pass", flag="eval-batch-size", metavar="N")
    pool: int = setting(4, "fitness token pool, in multiples of the last stage's tokens: evolution scores each "
                        "generation on fresh batches drawn from it", flag="fitness-pool", metavar="X")

    def __post_init__(self) -> None:
        self.token_schedule  # validates
        require(self.topk >= 1, "topk", self.topk, ">= 1")
        require(self.batch_size >= 1, "eval_batch_size", self.batch_size, ">= 1")
        require(self.pool >= 1, "fitness_pool", self.pool, ">= 1")

    @property
    def token_schedule(self) -> TokenSchedule:
        try:
            return TokenSchedule.parse(self.schedule)
        except ValueError as e:
            raise ConfigError(f"schedule: {e}") from None
