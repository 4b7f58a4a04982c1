"""The supernet build and the search at a real model's shape, with random weights (no download).
Prints one JSON object: build wall time, peak memory (accelerator memory, or the process's
resident set on a CPU), supernet disk (and the plan's predictions), evaluation tokens/s dense
and at 50%, and the wall time of one evolution generation on the darwinlm schedule.

    python -m bench.scale --shape llama-3.1-8b --random-weights            # on a GPU: bf16
    python -m bench.scale --shape llama-3.2-1b --random-weights --device cpu --calib-samples 8 \\
        --calib-seqlen 256                                                   # on a CPU: float32

Random weights (std 0.02) and random tokens give real shapes, so time, memory and disk are
those of the real model; quality numbers (KL) are meaningless and not reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    # the published configs' shapes (hub ids: meta-llama/Llama-3.1-8B, meta-llama/Llama-3.2-1B, Qwen/Qwen3-8B)
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=False, max_position_embeddings=40960, rope_theta=1000000.0),
}


def random_model(shape: str, dtype, device, layers: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(SHAPES[shape])
    if layers:
        kw["num_hidden_layers"] = layers
    config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02, generator=g)
    return model.eval()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="llama-3.1-8b")
    p.add_argument("--random-weights", action="store_true", required=True,
                   help="initialise the shape randomly (the only mode: nothing is downloaded)")
    p.add_argument("--device", default="auto", help="auto: the accelerator if any, else cpu")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on an accelerator, float32 on a CPU")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--schedule", default="darwinlm")
    p.add_argument("--offspring", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", help="supernet folder (default: a temporary one, deleted after)")
    p.add_argument("--layers", type=int, default=0,
                   help="build only this many decoder layers of the shape (0: all); the JSON adds per-layer "
                        "build time and the full model's extrapolated build time")
    return p.parse_args()


def device_and_dtype(args):
    import torch

    if args.device == "auto":
        device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    else:
        device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    return device, dtype


def build(model, calib, folder: Path, cfg, schedule, args, device, out: dict):
    """The supernet build: wall time, peak memory and disk, next to the plan's predictions."""
    from sparsearch.launch.config import SearchConfig
    from sparsearch.launch.plan import ModelShape, plan
    from sparsearch.supernet import build_supernet
    from sparsearch.supernet.memory import PeakMemory

    full_layers = SHAPES[args.shape]["num_hidden_layers"]
    planned = plan(ModelShape.from_config(model.config, str(model.dtype).replace("torch.", "")), cfg,
                   samples=args.calib_samples, seqlen=args.calib_seqlen, schedule=schedule,
                   search=SearchConfig(engine="uniform", target_sparsity=0.5), device=device.type,
                   mapped_weights=False)  # random weights live in ordinary memory
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        store = build_supernet(model, calib, str(folder), cfg, model_name=f"random {args.shape}", progress=True)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        if args.layers:
            out["build_s_per_layer"] = round(out["build_s"] / args.layers, 1)
            out["build_s_extrapolated_all_layers"] = round(out["build_s"] / args.layers * full_layers, 1)
    key = "peak_gpu_memory_gib" if device.type != "cpu" else "peak_rss_gib"
    out[key] = round(mem.peak_bytes / 2**30, 2)
    out["disk_gib"] = round(store.new_bytes / 2**30, 2)
    out["plan"] = {"disk_gib": round(planned["supernet"]["disk_bytes"] / 2**30, 2),
                   "peak_memory_gib": round(planned["build"]["peak_memory_mib"] / 1024, 2)}
    return store


def evaluate_and_search(model, store, fit_tokens, schedule, run_dir: Path, args, device, out: dict) -> None:
    """Evaluation tokens/s (dense and uniform 50%) and the wall time of one evolution generation."""
    import torch

    from sparsearch.fitness.evaluator import Evaluator
    from sparsearch.search.budget import Budget, CostModel
    from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine, evolve_generation

    ev = Evaluator(model, store, fit_tokens, schedule, batch_size=args.eval_batch_size)
    space = ev.space
    last = len(schedule) - 1
    for name, genome in (("dense", space.dense), ("uniform_50", space.uniform(0.5))):
        ev.stitcher.apply(genome)
        ev.score(model, 1)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ev.score(model, ev.rows(last))
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"eval_tokens_per_s_{name}"] = round(ev.rows(last) * args.calib_seqlen / (time.perf_counter() - t0), 1)
    budget = Budget.from_sparsity(CostModel.params(space), 0.5)
    evo_cfg = EvolutionConfig(generations=1, offspring=args.offspring)
    engine = EvolutionEngine(space, budget, ev, evo_cfg, run_dir=str(run_dir), log=None)
    engine.files.reset()
    engine.initialize()
    t0 = time.perf_counter()
    evolve_generation(engine.parent, engine.parent_score, engine.fitness, budget, engine.rng, evo_cfg)
    out["evolution_generation_s"] = round(time.perf_counter() - t0, 1)
    out["evolution_generation"] = f"{args.offspring} offspring, schedule {args.schedule}"


def main() -> None:
    args = parse_args()

    import torch

    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.supernet import SupernetConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = device_and_dtype(args)
    out: dict = {"shape": args.shape, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                 "calibration": f"{args.calib_samples}x{args.calib_seqlen} random tokens"}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    t0 = time.perf_counter()
    model = random_model(args.shape, dtype, device, args.layers)
    if args.layers:
        out["layers_built"] = f"{args.layers} of {SHAPES[args.shape]['num_hidden_layers']}"
    out["params"] = sum(p.numel() for p in model.parameters())
    out["model_gib"] = round(out["params"] * model.dtype.itemsize / 2**30, 2)
    out["init_s"] = round(time.perf_counter() - t0, 1)

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, vocab, (args.calib_samples, args.calib_seqlen), generator=g)
    schedule = TokenSchedule.parse(args.schedule)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="scale-")) / "supernet"
    try:
        store = build(model, calib, folder, SupernetConfig(batch_size=args.batch_size), schedule, args, device, out)
        rows = -(-schedule.max_tokens // args.calib_seqlen)
        fit_tokens = torch.randint(0, vocab, (rows, args.calib_seqlen), generator=g)
        evaluate_and_search(model, store, fit_tokens, schedule, folder.parent / "run", args, device, out)
    finally:
        if not args.out:
            shutil.rmtree(folder.parent, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
