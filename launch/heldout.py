"""Held-out perplexity of a run's best, uniform and start genomes (text never used for fitness or calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsearch.fitness.data import read_text, tokenize_text
from sparsearch.fitness.metrics import eval_windows, perplexity
from sparsearch.base.settings import require, setting
from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Genome


@dataclass(frozen=True)
class HeldoutConfig:
    """``text``: a held-out text file; its first ``tokens`` tokens (0: all) in windows of ``seqlen``."""

    text: str | None = setting(None, "held-out text: the summary gets the perplexity of the best and the "
                               "uniform genome on it", flag="eval-text", metavar="FILE")
    seqlen: int = setting(512, "window length for --eval-text", flag="eval-seqlen", metavar="T")
    tokens: int = setting(65536, "score the first N tokens of --eval-text (0 = all)", flag="eval-tokens", metavar="N")

    def __post_init__(self) -> None:
        require(self.seqlen >= 2, "eval_seqlen", self.seqlen, ">= 2")
        require(self.tokens >= 0, "eval_tokens", self.tokens, ">= 0")


def text_windows(path: str, tokenizer, seqlen: int, max_tokens: int | None) -> torch.Tensor:
    """Non-overlapping windows of a text file's tokens; refuses a text shorter than one window."""
    windows = eval_windows(tokenize_text(read_text(path), tokenizer), seqlen, max_tokens)
    if windows.shape[0] == 0:
        raise SparsearchError(f"{path} has fewer than {seqlen} tokens (one window)")
    return windows


def heldout_windows(cfg: HeldoutConfig, tokenizer) -> torch.Tensor | None:
    """The windows of ``cfg.text``, read before the search so that a bad file fails early."""
    if cfg.text is None:
        return None
    return text_windows(cfg.text, tokenizer, cfg.seqlen, cfg.tokens or None)


def heldout_perplexity(cfg: HeldoutConfig, windows: torch.Tensor, stitcher, best: Genome, uniform: Genome,
                       *, batch_size: int, starts: dict[str, Genome] | None = None) -> dict[str, Any]:
    """Perplexity of the ``best`` and the ``uniform`` genome, and of each of ``starts`` (by name);
    the model is left stitched to ``best``."""
    def ppl(genome: Genome) -> dict[str, Any]:
        stitcher.apply(genome)
        return perplexity(stitcher.model, windows, batch_size=batch_size)

    base = ppl(uniform)
    others = {name: ppl(g)["perplexity"] for name, g in (starts or {}).items()}
    result = ppl(best)
    return {"data": cfg.text, "tokens": result["tokens"], "seqlen": cfg.seqlen,
            "perplexity": result["perplexity"], "uniform_perplexity": base["perplexity"],
            "starts_perplexity": others}
