"""Streaming metrics: perplexity on held-out text and KL(dense || candidate) per token."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

Tensor = torch.Tensor


def eval_windows(ids: Tensor, seqlen: int, max_tokens: int | None = None) -> Tensor:
    """Non-overlapping windows of ``seqlen`` tokens from a 1-D stream (the tail is dropped),
    limited to the first ``max_tokens`` tokens when given."""
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // seqlen
    return ids[: n * seqlen].view(n, seqlen)


@torch.no_grad()
def perplexity(model, windows: Tensor, *, batch_size: int = 4, progress: bool = False) -> dict:
    """``exp`` of the mean next-token NLL over all windows (each window scored on its own)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress):
        ids = windows[start : start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        nll += loss.item()
        count += ids[:, 1:].numel()
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "tokens": count}


def kl_per_token(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(teacher || student) of every position, in nats (float32)."""
    t = F.log_softmax(teacher_logits.float(), -1)
    s = F.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1)
