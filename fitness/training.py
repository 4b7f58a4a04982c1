"""Training a (pruned) model: short training-aware selection (DarwinLM) and healing share it.

:class:`Trainer` runs AdamW steps on a model's parameters with a loss given by the caller:
next-token cross-entropy (:func:`next_token_loss`, training-aware selection) or distillation
from the dense teacher (:func:`cached_distill_loss` on a top-k teacher cache,
:func:`online_distill_loss` on the teacher's full logits; ``heal``). Parameters
in a low-precision dtype (bfloat16, float16) get float32 *master weights*: the optimizer updates
the masters and the rounded result is written back after each step, so updates smaller than the
low-precision resolution accumulate instead of rounding away (at lr 1e-5 most bf16 updates do).

:func:`train_copy` trains a copy of the stitched candidate for training-aware selection. The copy
holds only the candidate's own modules: the dense blocks a stitched model keeps hidden (to
restore level 0) are not copied, and the dense model and the supernet are never modified.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sparsearch.fitness.config import TrainConfig
from sparsearch.fitness.metrics import kl_per_token
from sparsearch.fitness.teacher import TeacherCache

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _adamw(params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.AdamW:
    # fused: no per-step temporaries the size of the parameters (CPU and CUDA, float32 masters)
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)


class Trainer:
    """AdamW over ``params`` of ``model`` with float32 masters for low-precision parameters.

    Call order::

        trainer = Trainer(model, params, cfg, total_steps)
        for step in range(total_steps):
            loss = trainer.step(micro_batches, loss_fn)   # loss_fn(model, batch) -> scalar tensor
        trainer.state_tensors() / trainer.load_state_tensors(t)    # masters, optimizer, step (resume)
    """

    def __init__(self, model: nn.Module, params: Iterable[nn.Parameter], cfg: TrainConfig, total_steps: int):
        self.model, self.cfg, self.total_steps = model, cfg, total_steps
        self.params = [p for p in params]
        for p in self.params:
            p.requires_grad_(True)
        # float32 masters where the model is low precision; float32 parameters are their own masters
        self.masters = [p.detach().to(torch.float32, copy=True) if p.dtype in LOW_PRECISION else p for p in self.params]
        self.optimizer = _adamw(self.masters, cfg)
        self.step_index = 0

    def step(self, batches: list, loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> float:
        """One optimizer step over the micro-``batches`` (gradients averaged); returns the mean loss."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr_at(self.step_index, self.total_steps)
        total = 0.0
        for batch in batches:
            loss = loss_fn(self.model, batch) / len(batches)
            loss.backward()
            total += loss.item()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else 0
        scale = min(1.0, self.cfg.max_grad_norm / (float(norm) + 1e-6))
        if all(m is p for p, m in zip(self.params, self.masters)):
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            # one parameter at a time: its float32 gradient lives only while its master is updated
            # (AdamW keeps per-parameter state, so a step that sees one gradient updates only that one)
            for p, m in zip(self.params, self.masters):
                if p.grad is None:
                    continue
                if m is p:
                    p.grad.mul_(scale)
                else:
                    m.grad, p.grad = p.grad.float().mul_(scale), None
                self.optimizer.step()
                m.grad = None
                if m is not p:
                    with torch.no_grad():
                        p.copy_(m)
        self.step_index += 1
        return total

    def finish(self) -> None:
        for p in self.params:
            p.requires_grad_(False)
            p.grad = None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The resumable state as named tensors (safetensors, nothing pickled): the float32 masters,
        AdamW's per-parameter state, and the step count."""
        out = {"step": torch.tensor(self.step_index, dtype=torch.int64)}
        for i, m in enumerate(self.masters):
            out[f"master.{i}"] = m.detach().cpu().clone()
        for i, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                out[f"optimizer.{i}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors`; a set of tensors of another trainer (other parameters,
        shapes) raises ``ValueError``."""
        masters = [tensors.get(f"master.{i}") for i in range(len(self.masters))]
        if any(t is None or t.shape != m.shape for t, m in zip(masters, self.masters)) or "step" not in tensors:
            raise ValueError("the saved trainer state does not fit these parameters")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            kind, _, rest = name.partition(".")
            if kind == "optimizer":
                index, _, key = rest.partition(".")
                state.setdefault(int(index), {})[key] = value
        groups = self.optimizer.state_dict()["param_groups"]  # the hyperparameters are this run's own
        self.step_index = int(tensors["step"])
        with torch.no_grad():
            for p, m, saved in zip(self.params, self.masters, masters):
                m.copy_(saved)
                if m is not p:
                    p.copy_(m)
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


def next_token_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def cached_distill_loss(cache: TeacherCache) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Distillation on a top-k teacher cache: the batch is a tensor of cache rows; the loss is the
    mean top-k KL(teacher || student) per position (:class:`~sparsearch.fitness.teacher.TeacherCache`).
    The teacher model need not be in memory."""

    def loss(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        logits = model(input_ids=cache.tokens[rows].to(device), use_cache=False).logits
        return cache.kl(rows, logits).mean()

    return loss


def online_distill_loss(teacher: nn.Module) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Distillation on the teacher's full logits, computed for each batch of token ids: the mean
    KL(teacher || student) per position over the whole vocabulary."""

    def loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(input_ids=ids, use_cache=False).logits
        return kl_per_token(target, model(input_ids=ids, use_cache=False).logits).mean()

    return loss


def candidate_copy(model: nn.Module) -> nn.Module:
    """A copy of a (stitched) model's own modules; the dense blocks a stitched layer keeps hidden
    to restore level 0 are not copied (the copy cannot be re-stitched)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        hidden = m.__dict__.get("dense_blocks")
        if hidden is not None:
            memo[id(hidden)] = {}
    return copy.deepcopy(model, memo)


def batch_rows(n: int, batch_size: int, seed: int):
    """Row indices of batches over ``n`` rows in one seeded order, cycled endlessly (the k-th batch
    depends only on ``n``, ``batch_size``, ``seed`` and ``k``: a resumed run skips ``k`` batches)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pos = 0
    while True:
        rows = torch.cat([order, order])[pos : pos + min(batch_size, n)]
        pos = (pos + len(rows)) % n
        yield rows


def token_batches(tokens: torch.Tensor, batch_size: int, seed: int):
    """Batches of ``tokens`` rows (N x T) in a seeded order, cycled endlessly."""
    for rows in batch_rows(tokens.shape[0], batch_size, seed):
        yield tokens[rows]


def train_copy(model: nn.Module, tokens: torch.Tensor, train_tokens: int, cfg: TrainConfig, *, seed: int = 0) -> nn.Module:
    """A trained copy of the candidate ``model``: ``ceil(train_tokens / (batch * accum * T))`` AdamW
    steps of next-token loss on batches of ``tokens`` (N x T), visited in a seeded order."""
    trained = candidate_copy(model)
    trained.train()
    device = next(trained.parameters()).device
    seqlen = tokens.shape[1]
    steps = math.ceil(train_tokens / (cfg.batch_size * cfg.grad_accum * seqlen))
    trainer = Trainer(trained, trained.parameters(), cfg, steps)
    batches = token_batches(tokens, cfg.batch_size, seed)
    for _ in range(steps):
        trainer.step([next(batches).to(device) for _ in range(cfg.grad_accum)], next_token_loss)
    trainer.finish()
    trained.eval()
    return trained
