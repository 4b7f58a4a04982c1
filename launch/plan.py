"""What a run will cost, from a model's config alone (no weights): ``sparsearch plan``.

- **Supernet on disk**: per unit and level, the kept structure follows the same rules as the
  build (:mod:`sparsearch.supernet.variants`; attention heads assumed removed group by group,
  as the per-parameter OBS score tends to do), and a variant file holds its kept indices and the
  refit output projection (plus the safetensors header); levels of one unit with the same kept
  structure share one file.
- **Build**: peak memory (one copy of the calibration stream, the largest unit's working set: a
  batch's activations, the Hessian and its OBS inverse, the variant modules; and the weights: on
  an accelerator all of them, on a CPU, where transformers memory-maps safetensors weights and the
  build releases each layer's pages behind it, one layer, or the embedding during the capture
  pass), and the forward passes (block runs over the calibration set; with error accumulation
  every stored variant runs once more), also as equivalent full-model passes.
- **Sampling** (``--calib-self``, the default calibration): peak memory of sampling the
  calibration sequences from the dense model before the build. Every step reads every weight, so
  the whole model is resident, with the KV cache of one batch of sequences (``--calib-sample-batch``)
  at full length and its logits; a separate peak, which on a CPU exceeds the build's.
- **Search**: one evaluation's tokens and FLOPs per fitness stage at the target sparsity, and
  the total forward tokens of the engine's evaluations (``Engine.planned_evaluations``).

The memory figures were fitted to measured builds of SmolLM2-135M on a CPU (resident set,
including the Python runtime) and are estimates; disk sizes are exact up to header bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.search.fitness import VALIDATION
from sparsearch.search.registry import ENGINES
from sparsearch.search.space import Level, SearchSpace, Unit
from sparsearch.supernet.adapters import DecoderShape
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.variants import attention_params, attention_states, level_heads, mlp_kept_channels, mlp_params

if TYPE_CHECKING:
    from sparsearch.launch.config import SearchConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Python, torch, transformers and its model code, resident before any weight is read (measured on
# SmolLM2-135M with transformers 5.24: 455-470 MiB, of which ~140 MiB is what importing a model's
# code pulls in, torch._dynamo among it)
RUNTIME_BYTES = 460 * 2**20
MiB = 2**20


@dataclass(frozen=True)
class ModelShape(DecoderShape):
    """The shapes a plan needs, read from a model's config: the decoder's, and what the
    parameter and byte counts add (vocabulary, biases, norms, dtype)."""

    vocab: int
    tied_embeddings: bool
    qkv_bias: bool
    mlp_bias: bool
    qk_norm: bool
    dtype_bytes: int
    sliding_window: int  # positions a sliding-window layer attends to (0: none)
    sliding_layers: int  # layers with that window (Mistral: all of them; Qwen2/3: as ``layer_types`` says)

    @classmethod
    def from_config(cls, config, dtype: str = "auto") -> "ModelShape":
        name = dtype if dtype != "auto" else str(getattr(config, "dtype", None) or "float32").replace("torch.", "")
        window = getattr(config, "sliding_window", None) or 0
        types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers  # Mistral
        return cls(
            **dataclasses.asdict(DecoderShape.from_config(config)), vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=bool(getattr(config, "attention_bias", False) or config.model_type == "qwen2"),
            mlp_bias=bool(getattr(config, "mlp_bias", False)), qk_norm=config.model_type == "qwen3",
            dtype_bytes=DTYPE_BYTES.get(name, 4), sliding_window=window,
            sliding_layers=sum(t == "sliding_attention" for t in types) if window else 0,
        )

    @property
    def attention_params(self) -> int:
        return attention_params(self.num_heads, self.num_kv_heads, self.hidden, self.head_dim, self.qkv_bias)

    @property
    def mlp_params(self) -> int:
        return mlp_params(self.intermediate, self.hidden, self.mlp_bias)

    @property
    def layer_params(self) -> int:
        """One decoder layer: attention, MLP and their norms (and q/k norms)."""
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return self.attention_params + self.mlp_params + norms

    @property
    def total_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings + self.hidden


def _header_bytes(tensors: dict[str, tuple[str, list[int], int]]) -> int:
    """Bytes of a safetensors header for tensors ``{name: (dtype, shape, nbytes)}``."""
    meta, offset = {}, 0
    for name, (dtype, shape, nbytes) in sorted(tensors.items()):
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(meta, separators=(",", ":")))
    return 8 + n + (-n) % 8


def planned_space(shape: ModelShape, cfg: SupernetConfig) -> SearchSpace:
    """The search space the build would make (attention heads removed group by group)."""
    hpg = shape.heads_per_group
    packed = [h for g in range(shape.num_kv_heads) for h in range(g * hpg, (g + 1) * hpg)]
    states = attention_states(packed, shape.num_kv_heads, shape.hidden, shape.head_dim, shape.qkv_bias,
                              balanced=cfg.balanced_heads)
    units, levels = [], []
    for layer in range(shape.num_layers):
        for kind in ("attn", "mlp"):
            unit = Unit(layer, kind)
            row = []
            for s in cfg.ladder(unit).sparsities:
                if kind == "attn":
                    heads = level_heads(states, s, shape.attention_params)
                    kv = len({h // hpg for h in heads})
                    row.append(Level(s, attention_params(len(heads), kv, shape.hidden, shape.head_dim, shape.qkv_bias),
                                     {"heads": len(heads), "kv_heads": kv}))
                else:
                    c = mlp_kept_channels(s, shape.intermediate, cfg.mlp_alignment)
                    row.append(Level(s, mlp_params(c, shape.hidden, shape.mlp_bias), {"channels": c}))
            units.append(unit)
            levels.append(tuple(row))
    return SearchSpace(tuple(units), tuple(levels))


def variant_bytes(shape: ModelShape, cfg: SupernetConfig, unit: Unit, level: Level) -> int:
    """Bytes of one variant file (0 for the dense and the removed level)."""
    dense = shape.attention_params if unit.kind == "attn" else shape.mlp_params
    if level.params in (0, dense):
        return 0
    store = DTYPE_BYTES[cfg.store_dtype]
    st = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[cfg.store_dtype]
    if unit.kind == "attn":
        heads, kv = level.kept["heads"], level.kept["kv_heads"]
        tensors = {"kept_heads": ("I32", [heads], 4 * heads), "kept_kv_heads": ("I32", [kv], 4 * kv)}
        if cfg.refit:
            cols = heads * shape.head_dim
            tensors["o_proj.weight"] = (st, [shape.hidden, cols], shape.hidden * cols * store)
    else:
        c = level.kept["channels"]
        tensors = {"kept_channels": ("I32", [c], 4 * c)}
        if cfg.refit:
            tensors["down_proj.weight"] = (st, [shape.hidden, c], shape.hidden * c * store)
    return _header_bytes(tensors) + sum(t[2] for t in tensors.values())


def disk_bytes(shape: ModelShape, cfg: SupernetConfig, space: SearchSpace) -> int:
    """Bytes on disk: one file per distinct kept structure of a unit (equal files are linked)."""
    total = 0
    for unit, levels in zip(space.units, space.levels):
        seen = set()
        for level in levels:
            key = tuple(sorted(level.kept.items()))
            if key not in seen:
                seen.add(key)
                total += variant_bytes(shape, cfg, unit, level)
    return total


def build_plan(shape: ModelShape, cfg: SupernetConfig, space: SearchSpace, samples: int, seqlen: int,
               device: str = "cpu", mapped_weights: bool = True) -> dict[str, Any]:
    """Peak memory and forward passes of building ``space`` on ``samples x seqlen`` tokens.
    ``mapped_weights``: on a CPU, the weights are memory-mapped from safetensors files in their
    own dtype (how transformers loads a checkpoint), not in ordinary memory (a converted dtype,
    random weights)."""
    act = 4  # activations and working sets are float32 on the paths that matter
    batch_tokens = min(cfg.batch_size, samples) * seqlen
    model = shape.total_params * shape.dtype_bytes
    stream = samples * seqlen * shape.hidden * shape.dtype_bytes
    working = []
    for unit, levels in zip(space.units[:2], space.levels[:2]):  # every layer is alike
        dense = levels[0].params
        width = shape.intermediate if unit.kind == "mlp" else shape.num_heads * shape.head_dim
        modules = sum(l.params for l in levels[1:] if 0 < l.params < dense) * shape.dtype_bytes
        activations = batch_tokens * (3 * width + 4 * shape.hidden) * act
        obs = width * width * (act + 3 * 8)  # the Hessian, and its float64 factor, inverse and update
        working.append(modules + activations + obs)
    if device == "cpu" and mapped_weights:  # resident one layer at a time (the embedding while capturing)
        embedding = shape.vocab * shape.hidden * shape.dtype_bytes
        weights = max(embedding, shape.layer_params * shape.dtype_bytes + max(working))
    else:
        weights = model + max(working)
    peak = stream + weights + (RUNTIME_BYTES if device == "cpu" else 0)
    prunable = sum(lv[0].params for lv in space.levels)
    block_passes, weighted = 0, 0.0
    for levels in space.levels:
        dense = levels[0].params
        runs = [dense]  # the dense pass gathers the Hessian (and, without accumulation, moves the stream)
        if cfg.error_accumulation:
            runs.append(dense)
            runs += [l.params for l in levels[1:] if 0 < l.params < dense]
        block_passes += len(runs)
        weighted += sum(runs)
    return {
        "peak_memory_mib": round(peak / MiB, 1),
        "memory": {"model_mib": round(model / MiB, 1), "calibration_stream_mib": round(stream / MiB, 1),
                   "largest_unit_mib": round(max(working) / MiB, 1),
                   "weights_and_unit_mib": round(weights / MiB, 1),
                   "runtime_mib": round(RUNTIME_BYTES / MiB, 1) if device == "cpu" else 0},
        "calibration_tokens": samples * seqlen,
        "block_passes": block_passes,
        "model_forward_equivalents": round(weighted / prunable + 1, 2),  # + the capture's pass
    }


def sampling_plan(shape: ModelShape, samples: int, seqlen: int, sample_batch: int, device: str = "cpu") -> dict[str, Any]:
    """Peak memory of sampling ``samples x seqlen`` calibration tokens from the dense model,
    ``sample_batch`` sequences at a time (what ``--calib-self`` does before the build)."""
    batch = min(sample_batch, samples)
    model = shape.total_params * shape.dtype_bytes
    # the cache is preallocated (fitness.data.sampling_cache): seqlen positions per layer, a
    # sliding-window layer its window's (transformers' StaticSlidingWindowLayer)
    positions = (shape.num_layers - shape.sliding_layers) * seqlen \
        + shape.sliding_layers * min(seqlen, max(shape.sliding_window, 1))
    kv = 2 * shape.num_kv_heads * shape.head_dim * shape.dtype_bytes * batch * positions
    # one step's float32 logits, a masked copy and their probabilities (4 bytes each), and the
    # float64 cumulative distribution a draw inverts (8)
    logits = (3 * 4 + 8) * batch * shape.vocab
    runtime = RUNTIME_BYTES if device == "cpu" else 0
    peak = runtime + model + kv + logits
    return {"peak_memory_mib": round(peak / MiB, 1), "sequences_at_once": batch, "kv_cache_bytes": kv,
            "memory": {"model_mib": round(model / MiB, 1), "kv_cache_mib": round(kv / MiB, 1),
                       "logits_mib": round(logits / MiB, 1), "runtime_mib": round(runtime / MiB, 1)}}


def evaluation_plan(shape: ModelShape, space: SearchSpace, target: float, schedule: TokenSchedule) -> list[dict]:
    """Per fitness stage: tokens scored (and trained on) and forward FLOPs at the uniform genome."""
    genome = space.uniform(target)
    per_token = 2 * (space.params(genome) + shape.vocab * shape.hidden)  # matmuls, with the LM head
    out = []
    for i, st in enumerate(schedule.stages):
        flops = per_token * st.tokens + 3 * per_token * st.train_tokens  # training: forward + backward
        out.append({"stage": i, "survivors": st.survivors, "tokens": st.tokens, "train_tokens": st.train_tokens,
                    "gflops": round(flops / 1e9, 1)})
    return out


def search_plan(search: "SearchConfig", schedule: TokenSchedule, space: SearchSpace, validation_rows: int,
                seqlen: int) -> dict:
    """Evaluations and forward tokens of a search: the engine's own (``Engine.planned_evaluations``),
    its starts' (each scored on the final stage; a start that probes, the knapsack, its probes too),
    and with a validation split of ``validation_rows`` sequences its candidates' (``Engine.planned_steps``
    step bests, the starts, the uniform genome and the final best)."""
    survivors = [s.survivors for s in schedule.stages]
    engine_cls = ENGINES[search.engine].engine
    counts = engine_cls.planned_evaluations(search.engine_config, survivors, space)
    final = len(schedule) - 1
    starts = search.start_names
    for name in starts:
        if name == search.engine:
            continue  # a one-shot engine's planned evaluations are its start's
        start_cls, config = ENGINES[name].engine, search.start_config(name)
        for stage, n in (start_cls.planned_evaluations(config, survivors, space) if start_cls.probes_fitness
                         else {final: 1}).items():
            counts[stage] = counts.get(stage, 0) + n
    if validation_rows and engine_cls.chooses_on_validation and not engine_cls.one_shot:
        counts[VALIDATION] = engine_cls.planned_steps(search.engine_config) + len(starts) + 2
    tokens = sum(n * (validation_rows * seqlen if s == VALIDATION else schedule.stages[s].tokens
                      + schedule.stages[s].train_tokens) for s, n in counts.items())
    per_stage = {("validation" if k == VALIDATION else str(k)): v for k, v in sorted(counts.items())}
    return {"evaluations": sum(counts.values()), "evaluations_per_stage": per_stage, "forward_tokens": tokens}


def plan(shape: ModelShape, cfg: SupernetConfig, *, samples: int, seqlen: int, search: "SearchConfig",
         schedule: TokenSchedule, validation_rows: int = 0, device: str = "cpu", mapped_weights: bool = True,
         sample_batch: int | None = None) -> dict:
    """The whole plan; ``sample_batch``: the calibration is sampled from the model that many
    sequences at a time (``--calib-self``), which adds the ``sampling`` phase."""
    space = planned_space(shape, cfg)
    disk = disk_bytes(shape, cfg, space)
    return {
        "model": dataclasses.asdict(shape) | {"params": shape.total_params},
        "supernet": {"units": len(space.units), "levels": sorted({len(l) for l in space.levels}),
                     "disk_bytes": disk, "disk_mib": round(disk / MiB, 1)},
        **({"sampling": sampling_plan(shape, samples, seqlen, sample_batch, device)} if sample_batch else {}),
        "build": build_plan(shape, cfg, space, samples, seqlen, device, mapped_weights),
        "evaluation": evaluation_plan(shape, space, search.target_sparsity, schedule),
        "search": {"engine": search.engine, "init": search.init}
                  | search_plan(search, schedule, space, validation_rows, seqlen),
    }
