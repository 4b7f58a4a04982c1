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
