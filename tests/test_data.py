import copy
import json

import pytest
import torch

from tests.helpers.tiny import TEXT, tiny_model, tiny_tokenizer
from sparsearch.fitness.data import (CalibrationConfig, calibration_tokens, draw_categorical, sample_from_model,
                                     tokenize_text, windows)
from sparsearch.fitness.metrics import eval_windows, kl_per_token, perplexity
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.base.errors import SparsearchError


def test_windows_are_seeded_and_non_overlapping_when_text_suffices():
    ids = torch.arange(1000)
    a = windows(ids, 10, 50, seed=3)
    assert a.shape == (10, 50)
    assert torch.equal(a, windows(ids, 10, 50, seed=3))
    assert not torch.equal(a, windows(ids, 10, 50, seed=4))
    starts = sorted(a[:, 0].tolist())
    assert all(s % 50 == 0 for s in starts) and len(set(starts)) == 10
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(10, 49, dtype=torch.long))


def test_windows_too_short_text_is_an_error():
    with pytest.raises(SparsearchError, match="fewer than one sequence"):
        windows(torch.arange(10), 2, 50, seed=0)


def test_text_file_source(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    cfg = CalibrationConfig("text", str(f), samples=4, seqlen=16, seed=1)
    t = calibration_tokens(cfg, None, tok)
    assert t.shape == (4, 16)
    stream = tokenize_text(TEXT, tok)
    for row in t:  # every window is a contiguous piece of the tokenized text
        s = int((stream.unfold(0, 16, 1) == row).all(1).nonzero()[0])
        assert torch.equal(stream[s : s + 16], row)


def test_dataset_source_from_local_jsonl(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"body": line}) for line in TEXT.split(". ")))
    cfg = CalibrationConfig("dataset", f"{f}::train:body", samples=3, seqlen=8)
    assert calibration_tokens(cfg, None, tok).shape == (3, 8)
    with pytest.raises(SparsearchError, match="no field 'text'"):
        calibration_tokens(CalibrationConfig("dataset", str(f), samples=3, seqlen=8), None, tok)


def test_self_generated_is_seeded_and_avoids_special_tokens():
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    a = sample_from_model(model, tok, samples=3, seqlen=12, seed=7, batch_size=2)
    assert a.shape == (3, 12)
    assert torch.equal(a, sample_from_model(model, tok, samples=3, seqlen=12, seed=7, batch_size=2))
    assert not torch.equal(a, sample_from_model(model, tok, samples=3, seqlen=12, seed=8, batch_size=2))
    assert not set(a.flatten().tolist()) & set(tok.all_special_ids)


def test_a_draw_follows_the_softmax_and_never_takes_a_masked_token():
    """Probabilities 0.1/0.2/0.3/0/0.4 by construction: over 200,000 rows each count lies within
    5 standard deviations of its expectation, and the -inf entry is never drawn."""
    rows = 200_000
    logits = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0]).log().expand(rows, 5).clone()
    logits[:, 3] = -float("inf")
    drawn = draw_categorical(logits, torch.Generator().manual_seed(0))
    assert drawn.shape == (rows, 1)
    counts = torch.bincount(drawn.flatten(), minlength=5).double()
    p = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    assert counts[3] == 0
    assert ((counts - rows * p).abs() <= 5 * (rows * p * (1 - p)).sqrt()).all(), counts
    again = draw_categorical(logits, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_sampling_with_the_preallocated_cache_sees_what_a_forward_pass_sees(arch):
    """The logits at every sampled position equal a forward pass over the finished samples, on
    each family (Mistral's 16-token sliding window is shorter than the 24 sampled tokens), and no
    step records an autograd graph though the weights require gradients (a graph kept over 512
    steps of 128 sequences held 24 GiB on SmolLM2)."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok))
    assert all(p.requires_grad for p in model.parameters()) and torch.is_grad_enabled()
    seen: dict[int, list[torch.Tensor]] = {}
    tokens = sample_from_model(model, tok, samples=3, seqlen=24, seed=3, batch_size=2,
                               on_logits=lambda row, logits: seen.setdefault(row, []).append(logits))
    with torch.no_grad():
        full = model(input_ids=tokens).logits.float()
    assert not any(logits.requires_grad for steps in seen.values() for logits in steps)
    stepped = torch.cat([torch.stack(seen[row], 1) for row in sorted(seen)])
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


def test_config_validation():
    with pytest.raises(ValueError):
        CalibrationConfig("text")
    with pytest.raises(ValueError):
        CalibrationConfig("web", "x")
    with pytest.raises(ValueError):
        CalibrationConfig(samples=0)


def test_perplexity_of_uniform_predictor_is_vocab_size():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=False):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 50)})()

    res = perplexity(Uniform(), eval_windows(torch.arange(100) % 50, 10), batch_size=3)
    assert res["perplexity"] == pytest.approx(50.0)
    assert res["tokens"] == 10 * 9


def test_kl_is_zero_for_equal_and_positive_otherwise():
    a = torch.randn(2, 5, 11)
    assert kl_per_token(a, a).abs().max() < 1e-6
    assert (kl_per_token(a, a + torch.randn(2, 5, 11)) > 0).all()
    # shift invariance of logits
    assert kl_per_token(a, a + 3.0).abs().max() < 1e-5


def _metaspace_tokenizer():
    """A tokenizer that prefixes every call with a word boundary (SentencePiece's dummy prefix)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


@pytest.mark.parametrize("make", [tiny_tokenizer, _metaspace_tokenizer])
def test_long_texts_tokenize_in_pieces_to_the_same_ids(make, monkeypatch):
    from sparsearch.fitness import data

    tok = make()
    text = "\n".join(f"Line {i}: {TEXT[i % 50: i % 50 + 40]}\n\n    indented {i}.\nx" for i in range(300))
    whole = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(data, "_CHUNK", 97)
    cut = data._line_chunks(text, 97)
    assert len(cut) > 50 and "".join(cut) == text
    assert torch.equal(tokenize_text(text, tok), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_cache_kept_while_sampling_equals_a_teacher_pass(dtype):
    """TeacherCache.sample: the tokens of sample_from_model and the cache of a forward pass over
    them, measured by what it is for, the top-k KL to a student, against a float64 reference."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=len(tok)).to(dtype)
    fused = TeacherCache.sample(model, tok, samples=3, seqlen=12, seed=7, k=16, batch_size=2)
    assert torch.equal(fused.tokens, sample_from_model(model, tok, samples=3, seqlen=12, seed=7, batch_size=2))
    passed = TeacherCache.compute(model, fused.tokens, k=16)
    reference_model = copy.deepcopy(model).double()
    reference = TeacherCache.compute(reference_model, fused.tokens, k=16)
    assert fused.top_logits.shape == (3, 12, 16) and fused.lse.shape == (3, 12)
    if dtype == torch.float32:
        assert torch.equal(fused.top_index, passed.top_index)
        for f in ("top_logits", "lse", "rest_lse"):
            torch.testing.assert_close(getattr(fused, f), getattr(passed, f), rtol=1e-5, atol=1e-5)
    student = copy.deepcopy(reference_model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
        s_logits = student(input_ids=fused.tokens).logits
    kl_ref = reference.kl(slice(0, 3), s_logits)
    err_fused = (fused.kl(slice(0, 3), s_logits) - kl_ref).abs().max()
    err_pass = (passed.kl(slice(0, 3), s_logits) - kl_ref).abs().max()
    # the cache kept while sampling is as accurate as the teacher pass it replaces (rounding of the
    # model's dtype: float32 ~1e-6, bf16 ~1e-2 here)
    assert err_fused <= 2 * err_pass + 1e-5, (err_fused, err_pass)
    assert err_fused <= (1e-5 if dtype == torch.float32 else 0.1) * kl_ref.abs().max()
