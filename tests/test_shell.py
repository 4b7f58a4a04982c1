"""A weightless driver's model (supernet/models.py: load_shell): the module tree, parameter names,
shapes and dtypes that load_model gives, every parameter on the meta device, the same tokenizer."""

import pytest
import torch

from sparsearch.supernet.models import load_model, load_shell


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_the_shell_has_the_loaded_models_parameters_without_their_values(model_dir, dtype):
    model, tokenizer = load_model(str(model_dir / "model"), dtype=dtype)
    shell, shell_tokenizer = load_shell(str(model_dir / "model"), dtype=dtype)
    loaded = {n: (p.dtype, tuple(p.shape)) for n, p in model.named_parameters()}
    assert {n: (p.dtype, tuple(p.shape)) for n, p in shell.named_parameters()} == loaded
    assert {p.device.type for p in shell.parameters()} == {"meta"}
    assert type(shell) is type(model) and shell.config.to_dict() == model.config.to_dict()
    text = "the shell tokenizes as the model does"
    assert shell_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert next(model.parameters()).dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)


def test_a_gguf_file_has_no_shell(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert load_shell(str(tmp_path / "m.gguf")) is None
