"""Tiny random decoders and a small trained tokenizer: models for tests that need torch, made
in milliseconds and without a download."""

from __future__ import annotations

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3")

TEXT = (
    "Structured pruning removes attention heads and MLP channels. "
    "Layers differ, so the sparsity of each layer is searched under a global budget. "
    "The quick brown fox jumps over the lazy dog. 0123456789 "
) * 40


def tiny_model(arch: str = "llama", *, layers: int = 2, seed: int = 0, **overrides):
    """A tiny random decoder of a supported architecture (GQA: 4 query heads in 2 KV groups)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    if arch == "mistral":
        kw["sliding_window"] = 16
    kw.update(overrides)
    config = AutoConfig.for_model(arch, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # random init leaves tiny, near-identical weights; spread them so that pruning matters
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def llm_like(dtype, layers=2, **kw):
    """A tiny Llama with weights at an LLM's scale (std 0.02), where bf16 resolves about 1e-4."""
    model = tiny_model("llama", layers=layers, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(dtype)


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a short text (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
