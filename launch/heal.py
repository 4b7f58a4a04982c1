"""``sparsearch heal``: recover a run's pruned model by distillation from the dense model.

The student is the run's best genome as an exported model (real smaller tensors), trained on
tokens of a calibration source to match the dense teacher's next-token distribution: KL on
logits, by default on a top-k teacher cache computed once (the teacher then leaves memory), or
on the teacher's full logits (``teacher_topk=0``, the teacher stays loaded). LoRA adapters
(PEFT, merged into the weights at the end) or every parameter is trained with the shared
:class:`~sparsearch.fitness.training.Trainer` (AdamW, float32 masters for a bf16 model, gradient
accumulation, cosine schedule). The result is written as a healed export beside the plain one.

Files in ``RUN/heal/`` (all written atomically): ``settings.json`` (what a ``--resume`` must
match), ``data.safetensors`` (the training tokens and, with top-k, the teacher cache),
``checkpoint.safetensors`` (every ``checkpoint_every`` steps: trainer state and loss history, as
tensors and JSON metadata; nothing in the folder is unpickled); the
finished run writes ``RUN/heal.json``. A resumed run skips the batches already seen and ends
with the same weights as an uninterrupted one.

Call order::

    cfg = HealConfig(tokens=200_000)
    healed = heal(run_dir, out, cfg, calib, load=lambda spec: (model, tokenizer))
    healed.summary, healed.model          # also RUN/heal.json and the export in ``out``
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from sparsearch.fitness.config import TrainConfig
from sparsearch.fitness.data import CalibrationConfig, calibration_tokens
from sparsearch.fitness.metrics import perplexity
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.fitness.training import Trainer, batch_rows, cached_distill_loss, online_distill_loss
from sparsearch.launch.heldout import HeldoutConfig, heldout_windows
from sparsearch.base.atomic import atomic_write, atomic_write_json, read_json_object
from sparsearch.base.settings import as_dict, require, setting
from sparsearch.base.errors import SparsearchError, first_line
from sparsearch.base.tensorfiles import read_tensors, tensors_bytes

Log = Callable[[str], None]
HEAL_DIR = "heal"
HEAL_SUMMARY = "heal.json"
HEALED_EXPORT = "export-healed"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class HealConfig:
    """Distillation of the pruned model from the dense one: ``tokens`` training tokens in
    sequences of ``seqlen``, ``batch_size`` sequences per micro-batch and ``grad_accum``
    micro-batches per AdamW step, learning rate ``lr`` with ``warmup`` (a fraction of the steps)
    of linear warm-up then cosine decay to a tenth. LoRA of rank ``lora_rank`` (scale
    ``lora_alpha / lora_rank``) on every attention and MLP projection, or ``full``: every
    parameter. ``teacher_topk``: teacher logits kept per token (0: the full vocabulary, computed
    for each batch by the dense model kept in memory)."""

    tokens: int = setting(200_000, "distillation tokens from the calibration source", metavar="N")
    seqlen: int = setting(512, "tokens per training sequence", metavar="T")
    full: bool = setting(False, "train every parameter instead of LoRA adapters")
    lora_rank: int = setting(16, "LoRA rank", metavar="R")
    lora_alpha: float = setting(32.0, "LoRA alpha (the adapters are scaled by alpha / rank)")
    lr: float = setting(2e-4, "peak learning rate (cosine decay to a tenth)")
    warmup: float = setting(0.05, "linear warm-up, as a fraction of the steps")
    batch_size: int = setting(4, "sequences per micro-batch", metavar="N")
    grad_accum: int = setting(1, "micro-batches per optimizer step", metavar="N")
    teacher_topk: int = setting(64, "teacher logits kept per token (0: full vocabulary, teacher kept in memory)",
                                metavar="K")
    checkpoint_every: int = setting(25, "optimizer steps between checkpoints", metavar="K")

    def __post_init__(self) -> None:
        require(self.tokens >= 0, "tokens", self.tokens, ">= 0")
        require(self.seqlen >= 2, "seqlen", self.seqlen, ">= 2")
        require(self.lora_rank >= 1, "lora_rank", self.lora_rank, ">= 1")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "> 0")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.grad_accum >= 1, "grad_accum", self.grad_accum, ">= 1")
        require(0 <= self.warmup < 1, "warmup", self.warmup, "within [0, 1)")
        require(self.teacher_topk >= 0, "teacher_topk", self.teacher_topk, ">= 0")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, ">= 1")

    @property
    def sequences(self) -> int:
        return math.ceil(self.tokens / self.seqlen)

    @property
    def steps(self) -> int:
        return math.ceil(self.sequences / (self.batch_size * self.grad_accum))

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, grad_accum=self.grad_accum, lr_schedule="cosine",
                           warmup_steps=math.ceil(self.warmup * self.steps), min_lr_ratio=0.1)

    @property
    def method(self) -> str:
        return "full" if self.full else f"lora-r{self.lora_rank}"


# -- the pure steps -----------------------------------------------------------------------------
def student_model(stitcher, genome: list[int]):
    """The candidate ``genome`` as an independent exported model (its own tensors); the stitcher's
    model is returned to the dense genome."""
    from sparsearch.supernet.export import export_model

    stitcher.apply(tuple(genome))
    student = copy.deepcopy(export_model(stitcher.model))
    stitcher.apply(stitcher.space.dense)
    return student


def with_lora(model, cfg: HealConfig, seed: int):
    """``model`` with LoRA adapters (float32, PEFT) on its attention and MLP projections; the base
    weights are frozen. Seeded: the adapters' initialisation depends only on ``seed``."""
    import warnings

    from peft import LoraConfig, get_peft_model

    present = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS})
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # PEFT calls a transformers method that transformers 5.x deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                target_modules=present, bias="none"))


def _settings(cfg: HealConfig, summary: dict, calib: CalibrationConfig, dtype: str, seed: int) -> dict:
    return {"heal": as_dict(cfg), "genome": summary["best_genome"], "model": summary["model"],
            "calibration": calib.describe(), "dtype": dtype, "seed": seed}


CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # a pickle (before safetensors checkpoints): never loaded


def _save_checkpoint(path: Path, trainer: Trainer, history: list[float], seconds: float) -> None:
    meta = {"history": json.dumps(history), "seconds": repr(seconds)}
    atomic_write(path, tensors_bytes(trainer.state_tensors(), meta))


def _load_checkpoint(path: Path, trainer: Trainer) -> tuple[list[float], float]:
    """Restore ``trainer`` from the checkpoint at ``path``; returns the loss history and seconds."""
    fix = f"remove {path.parent} to heal from the start"
    tensors, meta = read_tensors(path, "heal checkpoint", fix, need=["step"])
    try:
        history, seconds = json.loads(meta["history"]), float(meta["seconds"])
        if not (isinstance(history, list) and all(isinstance(x, (int, float)) for x in history)):
            raise ValueError("history is not a list of numbers")
        trainer.load_state_tensors(tensors)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SparsearchError(f"heal checkpoint {path} does not fit this run ({first_line(e)}); {fix}") from None
    if len(history) != trainer.step_index:
        raise SparsearchError(f"heal checkpoint {path} holds {len(history)} losses for {trainer.step_index} steps; {fix}")
    return history, seconds


def training_data(path: Path, cfg: HealConfig, calib: CalibrationConfig, model, tokenizer, *, resume: bool,
                  progress: bool, log: Log) -> tuple[torch.Tensor, TeacherCache | None]:
    """The training tokens of ``cfg`` from ``calib`` (its ``samples`` and ``seqlen`` set from ``cfg``)
    and, with top-k, the teacher cache of the dense ``model``, written to ``path`` (read back from it
    on resume). They depend on neither the genome nor the training method."""
    calib = replace(calib, samples=cfg.sequences, seqlen=cfg.seqlen)
    if resume and path.is_file():
        fix = f"remove {path.parent} to heal from the start"
        t, _ = read_tensors(path, "heal data", fix, need=["tokens"])
        if "top_logits" in t:
            t, _ = read_tensors(path, "heal data", fix, need=TeacherCache.__dataclass_fields__)
        if t["tokens"].dim() != 2 or t["tokens"].dtype != torch.int64 or t["tokens"].shape[1] != cfg.seqlen:
            raise SparsearchError(f"heal data {path} holds no {cfg.seqlen}-token sequences; {fix}")
        return t["tokens"], (TeacherCache.from_tensors(t) if "top_logits" in t else None)
    log(f"heal data: {cfg.sequences} x {cfg.seqlen} tokens from {calib.source}"
        + (f" ({calib.location})" if calib.location else ""))
    cache = None
    if cfg.teacher_topk and calib.source == "self":  # the sampling steps already compute the teacher's logits
        log(f"teacher: top-{cfg.teacher_topk} logits of the dense model kept while sampling")
        cache = TeacherCache.sample(model, tokenizer, calib.samples, calib.seqlen, calib.seed, k=cfg.teacher_topk,
                                    batch_size=calib.sample_batch, progress=progress)
        tokens = cache.tokens
    else:
        tokens = calibration_tokens(calib, model, tokenizer, progress=progress)
        if cfg.teacher_topk:
            log(f"teacher: top-{cfg.teacher_topk} logits of the dense model on {tokens.numel():,} tokens")
            cache = TeacherCache.compute(model, tokens, k=cfg.teacher_topk, batch_size=cfg.batch_size,
                                         progress=progress)
    atomic_write(path, tensors_bytes(cache.tensors() if cache is not None else {"tokens": tokens}))
    return tokens, cache


@dataclass(frozen=True)
class Healed:
    """What :func:`heal` did and measured (also ``RUN/heal.json``), and the healed model."""

    summary: dict[str, Any]
    model: torch.nn.Module


def heal(run_dir: str | Path, out: str | Path, cfg: HealConfig, calib: CalibrationConfig, *, load: Callable,
         dtype: str = "auto", seed: int = 0, resume: bool = False, heldout: HeldoutConfig | None = None,
         eval_batch_size: int = 4, progress: bool = False, log: Log = lambda _: None) -> Healed:
    """Heal the best genome of the run in ``run_dir`` and write the healed export to ``out``.

    ``load(model_spec) -> (model, tokenizer)`` loads the run's dense model (dtype and device are
    the caller's). ``calib``: the training-token source (``samples`` and ``seqlen`` are set from
    ``cfg``). ``heldout``: held-out text whose perplexity is measured before and after. What was
    done and measured is also written to ``RUN/heal.json``.

    The recipe: check the run and the folders (:func:`_check_folders`), load the dense model
    (:func:`_load_dense`), make the training data (:func:`training_data`), export the student
    (:func:`student_model`), train it (:func:`_train`: LoRA or every parameter, checkpointed),
    measure held-out perplexity before and after, then write ``heal.json`` and the export.
    """
    from sparsearch.launch.report import healed_card
    from sparsearch.supernet.export import save_export
    from sparsearch.supernet.stitch import Stitcher

    started = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    summary = _run_summary(run_dir)
    heal_dir = run_dir / HEAL_DIR
    settings = _settings(cfg, summary, calib, dtype, seed)
    finished = _finished(run_dir, out, settings) if resume else None
    if finished is not None:  # killed after the export was in place: nothing left to do
        from sparsearch.supernet.models import load_model

        log(f"already healed: {out}")
        return Healed(finished, load_model(str(out))[0])
    _check_folders(heal_dir, out, settings, resume)
    store, model, tokenizer = _load_dense(summary, cfg, load)
    eval_windows = heldout_windows(heldout, tokenizer) if heldout is not None else None
    atomic_write_json(heal_dir / "settings.json", settings)

    tokens, cache = training_data(heal_dir / "data.safetensors", cfg, calib, model, tokenizer, resume=resume,
                                  progress=progress, log=log) if cfg.tokens else (None, None)
    student = student_model(Stitcher(model, store, check_fingerprint=False), summary["best_genome"])
    teacher = model if cfg.tokens and cache is None else None  # full logits: the dense model stays loaded
    del model  # otherwise the teacher is no longer needed: its top-k logits are cached
    before = _perplexity(student, eval_windows, eval_batch_size, "before healing", log)
    history: list[float] = []
    seconds = 0.0
    if cfg.tokens:
        student, history, seconds = _train(student, teacher, tokens, cache, cfg, heal_dir / CHECKPOINT, seed=seed,
                                           resume=resume, progress=progress, log=log)
    after = _perplexity(student, eval_windows, eval_batch_size, None, log)
    result = _result(run_dir, out, cfg, settings, history, seconds, before, after, student)
    result["wall_time_s"] = round(time.perf_counter() - started, 2)
    atomic_write_json(run_dir / HEAL_SUMMARY, result)  # first: a complete export means a finished run
    save_export(student, tokenizer, out, card=healed_card(summary, result))
    return Healed(result, student)


# -- the recipe's steps -------------------------------------------------------------------------
def _run_summary(run_dir: Path) -> dict:
    """The run's ``summary.json``: its best genome, model and supernet."""
    from sparsearch.launch.report import SUMMARY

    summary_path = run_dir / SUMMARY
    if not summary_path.is_file():
        raise SparsearchError(f"no {SUMMARY} in {run_dir}: run a search first")
    return read_json_object(summary_path, "run summary")


def _check_folders(heal_dir: Path, out: Path, settings: dict, resume: bool) -> None:
    """Refuse a non-empty export folder, a pickled checkpoint, and a started healing run that is
    not resumed or is resumed under other settings; on resume, remove an interrupted export."""
    if out.exists() and any(out.iterdir()):
        raise SparsearchError(f"export folder {out} exists and is not empty")
    if resume:  # the temporary folder of an export that a kill interrupted
        for stale in out.parent.glob(f".{out.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
    if resume and (heal_dir / LEGACY_CHECKPOINT).exists():
        raise SparsearchError(f"{heal_dir / LEGACY_CHECKPOINT} is a pickled checkpoint of an older sparsearch, which is "
                              f"never loaded (a pickle can run code); remove {heal_dir} to heal from the start")
    if heal_dir.exists() and any(heal_dir.iterdir()):
        if not resume:
            raise SparsearchError(f"{heal_dir} holds a started healing run: --resume continues it, or remove the folder")
        saved = read_json_object(heal_dir / "settings.json", "heal settings") if (heal_dir / "settings.json").is_file() else None
        if saved is not None and saved != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if json.loads(json.dumps(settings[k])) != saved.get(k))
            raise SparsearchError(f"{heal_dir} was started with other settings ({', '.join(changed)}); "
                                  "give the same ones to --resume, or remove the folder")


def _load_dense(summary: dict, cfg: HealConfig, load: Callable):
    """The run's supernet (its files checked) and dense model, which must be the supernet's and
    fit ``cfg.seqlen``: ``(store, model, tokenizer)``."""
    from sparsearch.launch.pipeline import require_fits
    from sparsearch.supernet.fingerprint import model_fingerprint
    from sparsearch.supernet.store import SupernetStore

    store = SupernetStore.open(summary["supernet"])
    store.check_files()
    model, tokenizer = load(summary["model"])
    store.check_model(model_fingerprint(model))
    require_fits(model, seqlens={"seqlen": cfg.seqlen})
    return store, model, tokenizer


def _perplexity(model, windows, batch_size: int, when: str | None, log: Log) -> dict | None:
    """Held-out perplexity of ``model`` (None without held-out text), logged ``when`` is given."""
    if windows is None:
        return None
    ppl = perplexity(model, windows, batch_size=batch_size)
    if when:
        log(f"held-out perplexity {when}: {ppl['perplexity']:.2f}")
    return ppl


def _train(student, teacher, tokens, cache: TeacherCache | None, cfg: HealConfig, ckpt_path: Path, *, seed: int,
           resume: bool, progress: bool, log: Log):
    """Distil ``student`` (through LoRA adapters, merged at the end, or every parameter), resumed
    from ``ckpt_path`` when there is a checkpoint: ``(healed model, loss history, train seconds)``."""
    trained = student if cfg.full else with_lora(student, cfg, seed)
    params = [p for p in trained.parameters() if cfg.full or p.requires_grad]
    trainer = Trainer(trained, params, cfg.train_config, cfg.steps)
    history: list[float] = []
    seconds = 0.0
    if resume and ckpt_path.is_file():
        history, seconds = _load_checkpoint(ckpt_path, trainer)
        log(f"resumed at step {trainer.step_index} of {cfg.steps}")
    loss_fn = cached_distill_loss(cache) if cache is not None else online_distill_loss(teacher)
    seconds = _train_steps(trained, trainer, tokens, cache is not None, loss_fn, cfg, ckpt_path, history, seconds,
                           seed=seed, progress=progress)
    trainer.finish()
    trained.eval()
    healed = trained if cfg.full else trained.merge_and_unload()
    step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seqlen
    log(f"healed: {cfg.method}, {cfg.steps} steps, {cfg.steps * step_tokens:,} tokens, distillation loss "
        f"{history[0]:.4f} -> {history[-1]:.4f}")
    return healed, history, seconds


def _train_steps(trained, trainer: Trainer, tokens, cached: bool, loss_fn, cfg: HealConfig, ckpt_path: Path,
                 history: list[float], seconds: float, *, seed: int, progress: bool) -> float:
    """The optimizer steps from ``trainer.step_index`` to the last, on the seeded batch order (the
    batches of the steps already taken are skipped); a checkpoint every ``checkpoint_every`` steps
    and after the last. Appends each step's loss to ``history``; returns the train seconds."""
    device = next(trained.parameters()).device
    rows = batch_rows(tokens.shape[0], cfg.batch_size, seed)
    for _ in range(trainer.step_index * cfg.grad_accum):
        next(rows)
    trained.train()
    step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seqlen
    bar = tqdm(total=cfg.steps, initial=trainer.step_index, desc=f"heal ({cfg.method})", unit="step",
               disable=not progress)
    while trainer.step_index < cfg.steps:
        t0 = time.perf_counter()
        batches = [next(rows) if cached else tokens[next(rows)].to(device) for _ in range(cfg.grad_accum)]
        history.append(trainer.step(batches, loss_fn))
        seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.4f}", tok_s=f"{step_tokens * len(history) / max(seconds, 1e-9):.0f}")
        if trainer.step_index % cfg.checkpoint_every == 0 or trainer.step_index == cfg.steps:
            _save_checkpoint(ckpt_path, trainer, history, seconds)
    bar.close()
    return seconds


def _result(run_dir: Path, out: Path, cfg: HealConfig, settings: dict, history: list[float], seconds: float,
            before: dict | None, after: dict | None, student) -> dict[str, Any]:
    """What was done and measured: the body of ``RUN/heal.json`` (without its wall time)."""
    return {
        "run_dir": str(run_dir.absolute()), "export": str(out.absolute()), "method": cfg.method,
        "settings": settings, "steps": cfg.steps if cfg.tokens else 0,
        "tokens": cfg.steps * cfg.batch_size * cfg.grad_accum * cfg.seqlen if cfg.tokens else 0,
        "loss": {"first": history[0] if history else None, "last": history[-1] if history else None,
                 "history": history},
        "train_seconds": round(seconds, 2),
        "perplexity": None if before is None else {"data_tokens": before["tokens"], "before": before["perplexity"],
                                                   "after": after["perplexity"]},
        "params": sum(p.numel() for p in student.parameters()),
    }


def _finished(run_dir: Path, out: Path, settings: dict) -> dict | None:
    """The summary of a finished healing run into ``out`` with these settings, if there is one."""
    path = run_dir / HEAL_SUMMARY
    if not (path.is_file() and (out / "config.json").is_file()):
        return None
    done = read_json_object(path, "heal summary")
    same = done.get("settings") == json.loads(json.dumps(settings)) and done.get("export") == str(out.absolute())
    return done if same else None
