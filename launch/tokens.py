"""Every token draw of a run, in one place: the supernet's calibration, the fitness pool, the
validation split, the training tokens of training-aware stages, the baselines' activations, heal's data.

The supernet's calibration (and the baselines' and heal's data) come from the run's calibration
source (:class:`~sparsearch.fitness.data.CalibrationConfig`); the fitness, validation and
training splits from its fitness source (:func:`fitness_source`: by default Python's reference
text when the calibration samples the model, else the calibration source). The splits a search
scores on never share a sequence:

- ``self`` (sampled from the dense model): each split samples its own sequences with its own seed,
  the run's seed plus the split's offset (:data:`SEED_OFFSETS`);
- a text or dataset: its windows are shuffled once with the run's seed; the calibration takes
  windows from the front, and the validation split, the fitness pool and the training tokens
  take theirs from the back, in that order. A text too short for validation and fitness to be
  disjoint is refused; the calibration (and then the training tokens) overlap the others only when
  the text has fewer windows than all of them together.

Held-out text is never drawn here: it is only for ``--eval-text`` and ``sparsearch eval``.
A search keeps its fitness, validation and training tokens in its run directory
(:data:`FILES`): a resumed run and the Ray actors read them from there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsearch.base.atomic import atomic_write
from sparsearch.base.errors import SparsearchError
from sparsearch.base.tensorfiles import read_tensors, tensors_bytes
from sparsearch.fitness.config import FitnessConfig
from sparsearch.fitness.data import CalibrationConfig, python_docs_text, read_source_ids, sample_from_model, windows

SEED_OFFSETS = {"calibration": 0, "fitness": 1, "training": 2, "validation": 3}
FILES = {"fitness": "fitness_tokens.safetensors", "training": "train_tokens.safetensors",
         "validation": "validation_tokens.safetensors"}
BACK_ORDER = ("validation", "fitness", "training")  # a text's windows from the back, in this order


@dataclass(frozen=True)
class TokenPlan:
    """How many sequences of ``seqlen`` tokens each split of a run takes."""

    seqlen: int
    calibration: int
    fitness: int
    validation: int = 0
    training: int = 0

    @classmethod
    def of(cls, calib: CalibrationConfig, fitness: FitnessConfig) -> "TokenPlan":
        """The splits of a search with ``fitness``: the pool (``pool`` times the last stage's tokens),
        the validation split (``validation`` times them) and the largest training stage's tokens."""
        last = math.ceil(fitness.token_schedule.max_tokens / calib.seqlen)
        most = max(s.train_tokens for s in fitness.token_schedule.stages)
        return cls(calib.seqlen, calib.samples, last * fitness.pool, last * fitness.validation,
                   math.ceil(most / calib.seqlen))

    def rows(self, split: str) -> int:
        return getattr(self, split)


def fitness_source(calib: CalibrationConfig, fitness: FitnessConfig) -> CalibrationConfig:
    """The source of a search's fitness, validation and training splits: ``fitness.source``, with
    ``auto`` resolved (Python's reference text for a self-sampling calibration when this Python
    ships it, else the calibration source); sequence length and seed are the calibration's."""
    source = fitness.source
    if source == "auto":
        source = "python-docs" if calib.source == "self" and python_docs_text() is not None else "calibration"
    if source == "calibration":
        return calib
    return dataclasses.replace(calib, source=source, location=None)


def draw(calib: CalibrationConfig, plan: TokenPlan, split: str, model, tokenizer, *, progress: bool = False,
         rows: int | None = None) -> torch.Tensor:
    """The ``split``'s ``rows`` (default: the plan's) sequences, ``rows x plan.seqlen`` token ids."""
    rows = plan.rows(split) if rows is None else rows
    if calib.source == "self":
        return sample_from_model(model, tokenizer, rows, plan.seqlen, calib.seed + SEED_OFFSETS[split],
                                 calib.sample_batch, progress)
    ids = read_source_ids(calib, tokenizer)
    slots = ids.numel() // plan.seqlen
    back = {s: plan.rows(s) for s in BACK_ORDER}
    if back["validation"] + back["fitness"] > slots:
        raise SparsearchError(
            f"the {'fitness' if split != 'calibration' else 'calibration'} source {calib.location or calib.source} "
            f"has {slots} windows of {plan.seqlen} tokens; the fitness pool and the validation "
            f"split need {back['fitness'] + back['validation']} that do not overlap (a longer text, fewer "
            "--fitness-pool or --validation, or a shorter --calib-seqlen)")
    if split == "calibration":
        return windows(ids, rows, plan.seqlen, calib.seed)
    order = torch.randperm(slots, generator=torch.Generator().manual_seed(calib.seed)).flip(0)
    start = sum(back[s] for s in BACK_ORDER[: BACK_ORDER.index(split)])
    picked = [order[(start + i) % slots] for i in range(rows)]  # the training tokens wrap on a short text
    return torch.stack([ids[int(s) * plan.seqlen : (int(s) + 1) * plan.seqlen] for s in picked])


def run_tokens(run_dir: Path, calib: CalibrationConfig, plan: TokenPlan, split: str, model, tokenizer, *,
               resume: bool, progress: bool = False) -> torch.Tensor | None:
    """The ``split`` tokens of the search in ``run_dir`` (None for a split of no rows): those kept in
    its file when resuming, else drawn anew and kept (a new run never scores on an old run's tokens;
    a resumed one checks them by fingerprint against its settings)."""
    rows = plan.rows(split)
    if not rows:
        return None
    path = run_dir / FILES[split]
    if resume and path.is_file():
        fix = "start a new run without --resume"
        tokens = read_tensors(path, f"{split} tokens", fix, need=["tokens"])[0]["tokens"]
        if tokens.dtype != torch.int64 or tokens.shape != (rows, plan.seqlen):
            raise SparsearchError(f"{split} tokens {path} are not {rows} x {plan.seqlen} token ids; {fix}")
        return tokens
    tokens = draw(calib, plan, split, model, tokenizer, progress=progress).contiguous()
    atomic_write(path, tensors_bytes({"tokens": tokens}))
    return tokens


def baseline_tokens(store_tokens: torch.Tensor | None, calib: CalibrationConfig, samples: int, model,
                    tokenizer) -> torch.Tensor:
    """What OWL and FLAP score activations on: the supernet's own calibration tokens when it keeps
    them, else ``samples`` calibration sequences."""
    if store_tokens is not None:
        return store_tokens[:samples]
    return draw(calib, TokenPlan(calib.seqlen, samples, 0), "calibration", model, tokenizer)


def heal_tokens(calib: CalibrationConfig, sequences: int, seqlen: int, model, tokenizer, *,
                progress: bool = False) -> torch.Tensor:
    """Healing's training sequences: ``sequences`` of ``seqlen`` tokens of the calibration source."""
    return draw(dataclasses.replace(calib, samples=sequences, seqlen=seqlen), TokenPlan(seqlen, sequences, 0),
                "calibration", model, tokenizer, progress=progress)
