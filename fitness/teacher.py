"""The dense model's logits on the fitness tokens, computed once and kept as top-k.

For each position the cache holds the teacher's ``k`` largest logits, their token ids, and the
log-normaliser (logsumexp over the full vocabulary). KL is then computed on the distributions
coarsened to the teacher's top-k tokens plus one "rest" bucket:

    KL_k = sum_{i in top-k} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest)

By the data-processing inequality ``0 <= KL_k <= KL`` (the coarsening merges outcomes), with
equality at ``k = vocabulary size``. The gap is exactly ``p_rest * KL(p~ || q~)``, the KL between
the two distributions renormalised within the rest bucket, hence at most
``p_rest * max_{j in rest} log(p~_j / q~_j)``: small when the teacher's tail mass is small, as it
is for trained LMs with peaked next-token distributions (the tests check the bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

Tensor = torch.Tensor


@dataclass
class TeacherCache:
    tokens: Tensor  # N x T token ids
    top_logits: Tensor  # N x T x k (float32)
    top_index: Tensor  # N x T x k (int64)
    lse: Tensor  # N x T (float32)

    @classmethod
    @torch.no_grad()
    def compute(cls, model, tokens: Tensor, k: int = 64, batch_size: int = 4) -> "TeacherCache":
        device = next(model.parameters()).device
        vals, idx, lse = [], [], []
        for start in range(0, tokens.shape[0], batch_size):
            logits = model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False).logits.float()
            top = logits.topk(min(k, logits.shape[-1]), dim=-1)
            vals.append(top.values.cpu())
            idx.append(top.indices.cpu())
            lse.append(torch.logsumexp(logits, -1).cpu())
        return cls(tokens.cpu(), torch.cat(vals), torch.cat(idx), torch.cat(lse))

    @property
    def k(self) -> int:
        return self.top_logits.shape[-1]

    def save(self, path: str | Path) -> None:
        save_file({"tokens": self.tokens, "top_logits": self.top_logits, "top_index": self.top_index,
                   "lse": self.lse}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "TeacherCache":
        t = load_file(str(path))
        return cls(t["tokens"], t["top_logits"], t["top_index"], t["lse"])

    def kl(self, rows: slice, student_logits: Tensor) -> Tensor:
        """Per-position top-k KL(teacher || student) for the cached sequences ``rows``."""
        dev = student_logits.device
        log_q = torch.log_softmax(student_logits.float(), -1)
        log_p_top = (self.top_logits[rows] - self.lse[rows].unsqueeze(-1)).to(dev)
        log_q_top = log_q.gather(-1, self.top_index[rows].to(dev))
        p_top = log_p_top.exp()
        kl = (p_top * (log_p_top - log_q_top)).sum(-1)
        p_rest = (1.0 - p_top.sum(-1)).clamp_min(0.0)
        q_rest = (1.0 - log_q_top.exp().sum(-1)).clamp_min(1e-30)
        rest = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - q_rest.log()), torch.zeros_like(p_rest))
        return kl + rest
