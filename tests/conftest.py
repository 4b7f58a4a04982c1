import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

ARCHS = ("llama", "mistral", "qwen2", "qwen3")


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


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 128, (6, 24), generator=g)


TEXT = (
    "Structured pruning removes attention heads and MLP channels. "
    "Layers differ, so the sparsity of each layer is searched under a global budget. "
    "The quick brown fox jumps over the lazy dog. 0123456789 "
) * 40


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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny Llama with its tokenizer, and a text file for calibration/evaluation."""
    root = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=128)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "text.txt").write_text(TEXT)
    return root
