"""Token sources: a text file, a ``datasets`` dataset, Python's own reference text, or text
sampled from the dense model.

All return an ``N x T`` tensor of token ids, reproducible for a given seed. Calibration and
fitness tokens come from here; held-out perplexity text must be another source.
"""

from __future__ import annotations

import functools
import re
import warnings

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StaticCache

from sparsearch.base.settings import require, require_choice, setting
from sparsearch.base.errors import SparsearchError, SparsearchWarning, first_line
from sparsearch.supernet.modules import cache_keyword, output_cache

SOURCES = ("self", "text", "dataset", "python-docs")
LOCATED = ("text", "dataset")  # the sources that name a file or dataset
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration tokens come from and how many.

    source: ``self`` (sampled from the dense model, no data needed), ``text`` (a file),
    ``dataset`` (a ``datasets`` spec ``NAME[:CONFIG[:SPLIT[:FIELD]]]``, split ``train`` and field
    ``text`` by default; NAME may be a local .json/.jsonl/.csv/.parquet file) or ``python-docs``
    (:func:`python_docs_text`, what a search scores on by default). ``location`` is the file or
    the spec (on the command line: ``--calib-self``, ``--calib-text FILE`` or ``--calib-dataset SPEC``).
    """

    source: str = setting("self", "calibration source", choices=SOURCES, cli=False)
    location: str | None = setting(None, "calibration file or dataset spec", cli=False)
    samples: int = setting(128, "calibration sequences", flag="calib-samples", metavar="N")
    seqlen: int = setting(512, "tokens per calibration sequence", flag="calib-seqlen", metavar="T")
    seed: int = setting(0, "calibration seed (the run's --seed)", cli=False)
    sample_batch: int = setting(128, "sequences sampled together by --calib-self (larger is faster per token)",
                                flag="calib-sample-batch", metavar="N")

    def __post_init__(self) -> None:
        require_choice("calibration source", self.source, SOURCES)
        require(self.source not in LOCATED or bool(self.location), "calibration location", self.location,
                f"a file or dataset spec for source {self.source!r}")
        require(self.samples >= 1, "calib_samples", self.samples, ">= 1")
        require(self.seqlen >= 2, "calib_seqlen", self.seqlen, ">= 2")
        require(self.sample_batch >= 1, "calib_sample_batch", self.sample_batch, ">= 1")

    def describe(self) -> dict:
        return {"source": self.source, "location": self.location, "seed": self.seed}


def windows(ids: torch.Tensor, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``samples`` windows of ``seqlen`` tokens from a 1-D id stream: non-overlapping and in a
    seeded random order when the stream is long enough, else at seeded random offsets."""
    n = ids.numel()
    if n < seqlen:
        raise SparsearchError(f"the text has {n} tokens, fewer than one sequence of {seqlen}")
    g = torch.Generator().manual_seed(seed)
    slots = n // seqlen
    if slots >= samples:
        starts = torch.randperm(slots, generator=g)[:samples] * seqlen
    else:
        starts = torch.randint(0, n - seqlen + 1, (samples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


_CHUNK = 1 << 16  # characters per tokenizer call


def _ids(text: str, tokenizer) -> list[int]:
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def _line_chunks(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut right after a lone newline
    between two non-space characters (where byte-level BPE pre-tokenizers split anyway)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) and not (text[cut - 1] == "\n" and not text[cut - 2].isspace()
                                       and not text[cut].isspace()):
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [p for p in pieces if p]


def tokenize_text(text: str, tokenizer) -> torch.Tensor:
    """The text's token ids as a 1-D tensor (no special tokens).

    A long text is tokenized in pieces cut after newlines, so that the tokenizer's per-token
    bookkeeping (hundreds of bytes per token) never holds the whole text, when cutting there
    gives the same ids for this tokenizer (checked on a probe; tokenizers that prefix every call,
    as SentencePiece's dummy prefix does, tokenize the whole text at once).
    """
    probe = "def f(x):\n    return x.\nThe end.\n\nNext, 12 words\n"
    cuts = _line_chunks(probe, 8)
    if len(text) <= _CHUNK or _ids(probe, tokenizer) != [i for c in cuts for i in _ids(c, tokenizer)]:
        return torch.tensor(_ids(text, tokenizer), dtype=torch.long)
    ids: list[int] = []
    for piece in _line_chunks(text, _CHUNK):
        ids.extend(_ids(piece, tokenizer))
    return torch.tensor(ids, dtype=torch.long)


NOT_TEXT = 0.01  # a file with more than this fraction of non-text bytes is refused
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8 (surrogateescape)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f]")  # control characters other than \t \n \v \f \r


def read_text(path: str | Path) -> str:
    """A UTF-8 text file. One that is not mostly text (binary data, another encoding) is refused;
    a few undecodable bytes are replaced, with a warning."""
    p = Path(path)
    if not p.is_file():
        raise SparsearchError(f"text file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SparsearchError(f"cannot read {p}: {e.strerror}") from None
    text = data.decode("utf-8", errors="surrogateescape")
    bad = len(_UNDECODED.findall(text))
    control = len(_CONTROL.findall(text))
    if data and (bad + control) > NOT_TEXT * len(data):
        raise SparsearchError(f"{p} is not text: {100 * (bad + control) / len(data):.0f}% of its bytes are not "
                              "UTF-8 text (give a UTF-8 text file)")
    if bad:
        warnings.warn(SparsearchWarning(f"{p}: {bad} bytes are not UTF-8 and were replaced"), stacklevel=2)
        text = data.decode("utf-8", errors="replace")
    return text


def dataset_text(spec: str) -> str:
    """Join the text field of a ``datasets`` dataset given as ``NAME[:CONFIG[:SPLIT[:FIELD]]]``."""
    import datasets

    parts = spec.split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    field = parts[3] if len(parts) > 3 and parts[3] else "text"
    local = Path(name)
    builder = _LOCAL_BUILDERS.get(local.suffix) if local.is_file() else None
    try:
        if builder:
            ds = datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types for missing/unreachable data
        raise SparsearchError(f"could not load dataset {spec!r}: {first_line(e)}") from None
    if field not in ds.column_names:
        raise SparsearchError(f"dataset {spec!r} has no field {field!r} (fields: {', '.join(ds.column_names)})")
    return "\n\n".join(t for t in ds[field] if t)


def draw_categorical(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``logits`` (``b x V``), drawn from its softmax by inverting the
    cumulative distribution at one uniform number per row: the distribution of
    ``torch.multinomial(softmax(logits), 1)``, which draws V exponentials per row instead (most of
    a CPU sampling step). Indices whose logit is ``-inf`` are never drawn. Returns ``b x 1``."""
    cdf = torch.cumsum(torch.softmax(logits, -1), -1, dtype=torch.float64)
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[1] - 1)


def sampling_cache(model, seqlen: int) -> StaticCache:
    """The KV cache that sampling fills: preallocated for ``seqlen`` positions per layer (a
    sliding-window layer: its window), shaped at the first step by the keys it receives (so a
    pruned model's own head counts)."""
    return StaticCache(config=model.config, max_cache_len=seqlen)


@torch.no_grad()
def sample_from_model(
    model, tokenizer, samples: int, seqlen: int, seed: int, batch_size: int = 16, progress: bool = False,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Self-generated calibration: each sequence starts at a random non-special token and is
    continued by ancestral sampling (temperature 1) from the dense model with a KV cache
    preallocated for ``seqlen`` positions (a growing cache copies itself at every step).

    ``on_logits(row, logits)``, when given, is called at every position of every sequence, in
    order, with the model's float32 logits there (``b x V`` for the batch of sequences starting at
    ``row``, before special tokens are masked), the last position included (one more step, which
    draws nothing): what a forward pass over the finished samples would compute, up to rounding.
    The samples do not depend on it."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    vocab = model.get_output_embeddings().weight.shape[0]
    allowed = torch.tensor([i for i in range(min(vocab, len(tokenizer))) if i not in special], device=device)
    keyword = cache_keyword(model)

    def step(ids, past):
        return model(input_ids=ids, use_cache=True, **{keyword: past})

    out = []
    bar = tqdm(total=samples * seqlen, desc="sampling calibration", unit="tok", disable=not progress)
    for start in range(0, samples, batch_size):
        b = min(batch_size, samples - start)
        seq = allowed[torch.randint(0, len(allowed), (b, 1), generator=g, device=device)]
        past, step_in = sampling_cache(model, seqlen), seq
        while seq.shape[1] < seqlen:
            res = step(step_in, past)
            past = output_cache(res)
            logits = res.logits[:, -1, :].float()
            if on_logits is not None:
                on_logits(start, logits.clone())
            if special:
                logits[:, sorted(i for i in special if i < logits.shape[1])] = -float("inf")
            step_in = draw_categorical(logits, g)
            seq = torch.cat([seq, step_in], 1)
            bar.update(b)
        if on_logits is not None:  # the last position's logits: nothing is drawn from them
            on_logits(start, step(step_in, past).logits[:, -1, :].float())
        out.append(seq.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out)


@functools.cache
def python_docs_text() -> str | None:
    """Python's reference text: the topics of the language reference that ``pydoc`` shows
    (``help("assert")``, ...), shipped inside CPython as :mod:`pydoc_data` (about 465,000
    characters, no download), joined in sorted topic order; ``None`` in a Python without it. Read
    once per process: the run config asks whether it exists, and each split draws from it."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return None
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_source_ids(cfg: CalibrationConfig, tokenizer) -> torch.Tensor:
    """The token ids of a text, dataset or python-docs source, as one 1-D stream."""
    if cfg.source == "python-docs":
        text = python_docs_text()
        if text is None:
            raise SparsearchError("this Python has no pydoc_data (Python's reference text); "
                                  "choose --fitness-source calibration")
    else:
        text = read_text(cfg.location) if cfg.source == "text" else dataset_text(cfg.location)
    return tokenize_text(text, tokenizer)


def calibration_tokens(cfg: CalibrationConfig, model, tokenizer, *, progress: bool = False) -> torch.Tensor:
    """The ``samples x seqlen`` calibration tokens described by ``cfg`` (a run draws every split of
    its source through :mod:`sparsearch.launch.tokens`)."""
    if cfg.source == "self":
        return sample_from_model(model, tokenizer, cfg.samples, cfg.seqlen, cfg.seed, cfg.sample_batch, progress)
    return windows(read_source_ids(cfg, tokenizer), cfg.samples, cfg.seqlen, cfg.seed)
