"""Typed, validated configuration of the fitness: stages, teacher cache, batch size, and how
training-aware stages train a candidate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsearch.fitness.schedule import PRESETS, TokenSchedule
from sparsearch.base.settings import require, require_choice, setting
from sparsearch.base.errors import ConfigError

DEFAULT_SCHEDULE = "4:512,2:1024,1:2048"
FITNESS_SOURCES = ("auto", "calibration", "python-docs")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FitnessConfig:
    """``schedule``: stages ``survivors:tokens[:train_tokens]`` (or a preset name); ``topk``:
    teacher logits kept per token; ``batch_size``: sequences per scoring forward pass; ``pool``:
    the fitness tokens drawn from ``source``, as a multiple of the last stage's;
    ``validation``: the validation split, likewise (scored as stage :data:`~sparsearch.search.fitness.VALIDATION`);
    ``source``: where the fitness, validation and training tokens come from (``calibration``: the
    calibration source; ``python-docs``: Python's reference text; ``auto``: Python's reference text
    when the calibration samples the model itself, else the calibration source). A model's own
    samples calibrate its supernet well but score allocations worse than real text does
    (docs/benchmarks.md); a user's own text or dataset is used for both."""

    schedule: str = setting(DEFAULT_SCHEDULE, "fitness stages survivors:tokens[:train_tokens],... or a preset: "
                            + ", ".join(PRESETS), metavar="STAGES")
    topk: int = setting(64, "teacher logits kept per token for the KL")
    batch_size: int = setting(4, "sequences per scoring forward pass", flag="eval-batch-size", metavar="N")
    pool: int = setting(4, "fitness token pool, in multiples of the last stage's tokens: evolution scores each "
                        "generation on fresh batches drawn from it", flag="fitness-pool", metavar="X")
    validation: int = setting(4, "validation split of the fitness source that no fitness evaluation sees, in "
                              "multiples of the last stage's tokens: the run's genome is the candidate that scores "
                              "best on it (0: off, the search's own best)", metavar="X")
    source: str = setting("auto", "where fitness, validation and training tokens come from: the calibration source, "
                          "Python's reference text (python-docs, shipped with Python), or auto: python-docs when the "
                          "calibration samples the model (the default), else the calibration source",
                          flag="fitness-source", choices=FITNESS_SOURCES)

    def __post_init__(self) -> None:
        self.token_schedule  # validates
        require(self.topk >= 1, "topk", self.topk, ">= 1")
        require(self.batch_size >= 1, "eval_batch_size", self.batch_size, ">= 1")
        require(self.pool >= 1, "fitness_pool", self.pool, ">= 1")
        require(self.validation >= 0, "validation", self.validation, ">= 0")
        require_choice("fitness_source", self.source, FITNESS_SOURCES)

    @property
    def token_schedule(self) -> TokenSchedule:
        try:
            return TokenSchedule.parse(self.schedule)
        except ValueError as e:
            raise ConfigError(f"schedule: {e}") from None


@dataclass(frozen=True)
class TrainConfig:
    """How a candidate is trained (:class:`~sparsearch.fitness.training.Trainer`): by training-aware
    fitness stages (``--train-*`` flags of ``search``/``run``) and by ``heal`` (which sets its own
    values). AdamW: ``batch_size`` sequences per micro-batch, ``grad_accum`` micro-batches per step,
    gradients clipped to ``max_grad_norm``; ``lr_schedule``: constant, or cosine decay to
    ``min_lr_ratio * lr`` after ``warmup_steps`` of linear warm-up."""

    lr: float = setting(1e-5, "AdamW learning rate", flag="train-lr")
    weight_decay: float = setting(0.0, "AdamW weight decay", flag="train-weight-decay")
    batch_size: int = setting(4, "sequences per micro-batch", flag="train-batch-size", metavar="N")
    grad_accum: int = setting(1, "micro-batches per optimizer step", flag="train-grad-accum", metavar="N")
    max_grad_norm: float = setting(1.0, "gradient clipping norm", flag="train-max-grad-norm")
    lr_schedule: str = setting("constant", "learning-rate schedule", flag="train-lr-schedule", choices=SCHEDULES)
    warmup_steps: int = setting(0, "linear warm-up steps (cosine schedule)", flag="train-warmup-steps")
    min_lr_ratio: float = setting(0.1, "cosine schedule: final learning rate as a fraction of lr",
                                  flag="train-min-lr-ratio")

    def __post_init__(self) -> None:
        require(self.lr > 0, "train_lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "train_weight_decay", self.weight_decay, ">= 0")
        require(self.batch_size >= 1, "train_batch_size", self.batch_size, ">= 1")
        require(self.grad_accum >= 1, "train_grad_accum", self.grad_accum, ">= 1")
        require(self.max_grad_norm > 0, "train_max_grad_norm", self.max_grad_norm, "> 0")
        require_choice("train_lr_schedule", self.lr_schedule, SCHEDULES)
        require(self.warmup_steps >= 0, "train_warmup_steps", self.warmup_steps, ">= 0")
        require(0 <= self.min_lr_ratio <= 1, "train_min_lr_ratio", self.min_lr_ratio, "within [0, 1]")

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of ``total``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(total - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
