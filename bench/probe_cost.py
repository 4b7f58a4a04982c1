"""What a replace-one-unit probe costs against full-genome evaluations, on the default model.

    python -m bench.probe_cost --supernet runs/default/supernet [--tokens 2048] [--unit-stride 1] [--threads 2]

Scores every knapsack probe (each unit at each level alone) twice on the same fitness rows: from the
dense hidden states entering the unit (the product's path, the base's own pass included) and as full
passes, and times full passes of the uniform genome at the target. Prints one JSON object: seconds per
probe both ways, seconds per uniform evaluation, and the ratios; the two probe paths' scores are
checked equal.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=2048, help="fitness tokens per evaluation")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--unit-stride", type=int, default=1,
                   help="probe the levels of every K-th unit only (spread over the depth: a shorter run, the same mean)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from sparsearch.fitness.evaluator import Evaluator
    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.search.knapsack import probes
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    store = SupernetStore.open(args.supernet)
    rows = -(-args.tokens // args.seqlen)
    tokens = torch.randint(0, model.config.vocab_size, (rows, args.seqlen), generator=torch.Generator().manual_seed(0))
    ev = Evaluator(model, store, tokens, TokenSchedule.of([(1, args.tokens)]))
    genomes = [g for g in probes(ev.space) if not any(g) or next(u for u, x in enumerate(g) if x) % args.unit_stride == 0]
    t0 = time.perf_counter()
    fast = ev.evaluate_many(genomes, 0)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = [ev.evaluate(g, 0) for g in genomes]
    t_full = time.perf_counter() - t0
    uniform = ev.space.uniform(args.target)
    ev.evaluate(uniform, 0)
    t0 = time.perf_counter()
    for _ in range(3):
        ev.evaluate(uniform, 0)
    t_uniform = (time.perf_counter() - t0) / 3
    probe_s, full_s = t_fast / len(genomes), t_full / len(genomes)
    print(json.dumps({
        "model": args.model, "tokens": rows * args.seqlen, "threads": args.threads, "unit_stride": args.unit_stride,
        "probes": len(genomes),
        "scores_equal": fast == full, "probe_s": round(probe_s, 4), "probe_full_pass_s": round(full_s, 4),
        f"uniform_{args.target}_s": round(t_uniform, 4),
        "probe_over_full_pass": round(probe_s / full_s, 3),
        f"probe_over_uniform_{args.target}": round(probe_s / t_uniform, 3),
        "all_probes_s": round(t_fast, 1),
    }))


if __name__ == "__main__":
    main()
