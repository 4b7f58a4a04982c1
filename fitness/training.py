"""Short training of a candidate on a copy (DarwinLM's training-aware selection).

The candidate is deep-copied, so the stitched model, the dense weights it shares modules with,
and the supernet are never modified.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """AdamW on the next-token loss. ``batch_size`` sequences per step; ``max_grad_norm`` clips."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 4
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_grad_norm <= 0 or self.weight_decay < 0:
            raise ValueError(f"bad training config {self}")


def train_copy(model: nn.Module, tokens: torch.Tensor, train_tokens: int, cfg: TrainConfig, *, seed: int = 0) -> nn.Module:
    """A trained copy of ``model``: ``ceil(train_tokens / (batch * T))`` AdamW steps on batches of
    ``tokens`` (N x T), visited in a seeded order (cycled if the budget exceeds N x T)."""
    trained = copy.deepcopy(model)
    trained.train()
    params = [p for p in trained.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = next(trained.parameters()).device
    n, seqlen = tokens.shape
    steps = math.ceil(train_tokens / (cfg.batch_size * seqlen))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        rows = torch.cat([order, order])[pos : pos + min(cfg.batch_size, n)]
        pos = (pos + len(rows)) % n
        ids = tokens[rows].to(device)
        logits = trained(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
    trained.eval()
    for p in params:
        p.requires_grad_(False)
    return trained
