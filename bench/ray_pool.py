"""Ray evaluator pool benchmark on a small random Llama: evaluations/s in process vs 1 and 2 Ray
workers (one thread each), and the per-evaluation overhead of the Ray path. Prints one JSON object.

    python -m bench.ray_pool [--genomes 48] [--hidden 256] [--layers 4] [--seqlen 128]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--genomes", type=int, default=48)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=128)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    import torch
    from safetensors.torch import save_file

    from sparsearch.fitness.pool import EvaluatorSpec, InProcessPool, RayPool
    from sparsearch.supernet import SupernetConfig, build_supernet
    from tests.helpers.tiny import tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    tok = tiny_tokenizer()
    model = tiny_model("llama", layers=args.layers, vocab_size=len(tok), hidden_size=args.hidden,
                       intermediate_size=4 * args.hidden, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=args.hidden // 8, max_position_embeddings=2 * args.seqlen)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, len(tok), (8, args.seqlen), generator=g)
    store = build_supernet(model, calib, str(root / "sn"), SupernetConfig(mlp_alignment=32), progress=False)
    save_file({"tokens": torch.randint(0, len(tok), (4, args.seqlen), generator=g)}, str(root / "fit.safetensors"))
    spec = EvaluatorSpec(model=str(root / "model"), supernet=str(root / "sn"), tokens=str(root / "fit.safetensors"),
                         schedule=((1, 4 * args.seqlen, 0),), threads=1, device="cpu")
    space = store.space()
    rng = random.Random(0)
    genomes = [tuple(rng.randrange(len(lv)) for lv in space.levels) for _ in range(args.genomes)]

    def rate(pool) -> tuple[float, float]:
        pool.evaluate_many(genomes[:2], 0)  # warm-up (the first stitch reads and checks files)
        t = time.perf_counter()
        pool.evaluate_many(genomes, 0)
        wall = time.perf_counter() - t
        return len(genomes) / wall, wall / len(genomes)

    out = {"model": f"random llama, {args.layers} layers, hidden {args.hidden}", "genomes": args.genomes,
           "tokens_per_evaluation": 4 * args.seqlen, "cpu_cores": os.cpu_count()}
    eps, per = rate(InProcessPool(spec))
    out["in_process"] = {"evaluations_per_s": round(eps, 2), "s_per_evaluation": round(per, 4)}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    for workers in (1, 2):
        pool = RayPool(spec, workers, num_cpus=1)
        eps, per = rate(pool)
        out[f"ray_{workers}_workers"] = {"evaluations_per_s": round(eps, 2), "s_per_evaluation": round(per, 4)}
        pool.close()
    ray.shutdown()
    out["speedup_2_vs_1_workers"] = round(out["ray_2_workers"]["evaluations_per_s"] / out["ray_1_workers"]["evaluations_per_s"], 3)
    out["ray_overhead_per_evaluation"] = round(
        out["ray_1_workers"]["s_per_evaluation"] / out["in_process"]["s_per_evaluation"] - 1, 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
