"""The dense model's logits on the fitness tokens, computed once and kept as top-k.

For each position the cache holds the teacher's ``k`` largest logits, their token ids, the
log-normaliser (logsumexp over the full vocabulary) and the logsumexp of the other logits (the
"rest" bucket). KL is then computed on the distributions coarsened to the teacher's top-k tokens
plus the rest bucket:

    KL_k = sum_{i in top-k} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest)

By the data-processing inequality ``0 <= KL_k <= KL`` (the coarsening merges outcomes), with
equality at ``k = vocabulary size``. The gap is exactly ``p_rest * KL(p~ || q~)``, the KL between
the two distributions renormalised within the rest bucket, hence at most
``p_rest * max_{j in rest} log(p~_j / q~_j)``: small when the teacher's tail mass is small, as it
is for trained LMs with peaked next-token distributions (the tests check the bound).

Both rest masses are taken in log space from logsumexps over the rest (never as ``1 - sum(top)``,
which float32 turns into noise once a sharp student's rest mass falls below about 1e-7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

Tensor = torch.Tensor


@dataclass
class TeacherCache:
    tokens: Tensor  # N x T token ids
    top_logits: Tensor  # N x T x k (float32)
    top_index: Tensor  # N x T x k (int64)
    lse: Tensor  # N x T (float32): logsumexp of all logits
    rest_lse: Tensor  # N x T (float32): logsumexp of the logits outside the top k (-inf at k = vocabulary)

    @classmethod
    @torch.no_grad()
    def compute(cls, model, tokens: Tensor, k: int = 64, batch_size: int = 4, progress: bool = False) -> "TeacherCache":
        device = next(model.parameters()).device
        parts = []
        for start in tqdm(range(0, tokens.shape[0], batch_size), desc="teacher logits", disable=not progress):
            ids = tokens[start : start + batch_size]
            parts.append(cls.from_logits(ids, model(input_ids=ids.to(device), use_cache=False).logits, k))
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    @classmethod
    def sample(cls, model, tokenizer, samples: int, seqlen: int, seed: int, k: int = 64, batch_size: int = 16,
               progress: bool = False) -> "TeacherCache":
        """Sequences sampled from ``model`` (the tokens of :func:`~sparsearch.fitness.data.sample_from_model`
        with the same arguments) with the cache of its logits on them, kept from the sampling steps
        instead of a second forward pass: equal, up to the rounding of a KV-cached step against a
        full-sequence pass, to :meth:`compute` on the same tokens."""
        from sparsearch.fitness.data import sample_from_model

        steps: dict[int, list[tuple[Tensor, ...]]] = {}  # per batch, per position: the fields, on the model's device
        tokens = sample_from_model(model, tokenizer, samples, seqlen, seed, batch_size, progress,
                                   on_logits=lambda row, logits: steps.setdefault(row, []).append(_top_k(logits, k)))
        batches = [[torch.stack(field, 1) for field in zip(*positions)] for positions in steps.values()]  # b x T (x k)
        return cls(tokens, *(torch.cat(field).cpu() for field in zip(*batches)))

    @classmethod
    def from_logits(cls, tokens: Tensor, logits: Tensor, k: int) -> "TeacherCache":
        """The cache of teacher ``logits`` (N x T x V) on ``tokens`` (N x T)."""
        return cls(tokens.cpu(), *(field.cpu() for field in _top_k(logits, k)))

    @property
    def k(self) -> int:
        return self.top_logits.shape[-1]

    def tensors(self) -> dict[str, Tensor]:
        """The cache as named tensors (for safetensors)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> "TeacherCache":
        return cls(**{f: t[f] for f in cls.__dataclass_fields__})

    def kl(self, rows: slice | Tensor, student_logits: Tensor) -> Tensor:
        """Per-position top-k KL(teacher || student) for the cached sequences ``rows`` (a slice or
        row indices; float32)."""
        dev = student_logits.device
        logits = student_logits.float()
        index = self.top_index[rows].to(dev)
        log_norm = torch.logsumexp(logits, -1)
        log_q_top = logits.gather(-1, index) - log_norm.unsqueeze(-1)
        log_q_rest = rest_log_mass(logits, index, log_q_top, log_norm)
        lse = self.lse[rows].to(dev)
        log_p_top = self.top_logits[rows].to(dev) - lse.unsqueeze(-1)
        log_p_rest = self.rest_lse[rows].to(dev) - lse
        kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1)
        rest = torch.where(torch.isfinite(log_p_rest), log_p_rest.exp() * (log_p_rest - log_q_rest),
                           torch.zeros_like(log_p_rest))
        return kl + rest


def _top_k(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The cached fields of ``logits`` (... x V), on their device: top-k values (float32) and
    indices, logsumexp, and logsumexp of the rest."""
    logits = logits.float()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return top.values, top.indices, torch.logsumexp(logits, -1), rest_logsumexp(logits, top.indices)


REST_PRECISION = -1e-3  # log of the top-k mass below which 1 - mass is exact enough in float32


def rest_log_mass(logits: Tensor, index: Tensor, log_top: Tensor, log_norm: Tensor) -> Tensor:
    """``log(1 - sum(softmax(logits)[index]))``, the log-probability outside ``index``, from the
    top-k log-probabilities ``log_top`` (no second pass over the vocabulary). Where the top-k mass
    is within 1e-3 of 1, float32 cannot resolve the rest from it, and those positions take the
    rest's ``logsumexp`` directly (-inf when ``index`` covers every entry)."""
    top_mass = torch.logsumexp(log_top, -1)
    rest = torch.log(-torch.expm1(top_mass.clamp_max(REST_PRECISION)))
    close = top_mass > REST_PRECISION
    if close.any():
        rest[close] = rest_logsumexp(logits[close], index[close]) - log_norm[close]
    return rest


def rest_logsumexp(logits: Tensor, index: Tensor) -> Tensor:
    """``logsumexp`` over the last dimension of ``logits`` without the entries ``index`` (-inf when
    ``index`` covers every entry)."""
    return torch.logsumexp(logits.scatter(-1, index, float("-inf")), -1)
