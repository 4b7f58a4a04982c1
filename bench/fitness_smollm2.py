"""Fitness cost on the default model (SmolLM2-135M): forward tokens/s of dense vs uniform 25% and
50% candidates stitched from a supernet, and stitching time relative to a forward pass.
Prints one JSON object.

    python -m bench.fitness_smollm2 --supernet bench/out/smollm2-with_accumulation \\
        [--data-dir ../shared/data] [--sequences 4] [--seqlen 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def forward_s(model, tokens, repeats: int) -> float:
    """Median wall time of a forward pass over ``tokens``."""
    import torch

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(input_ids=tokens, use_cache=False)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def uniform_candidates(ev, model, tokens, repeats: int, out: dict) -> dict[str, float]:
    """Dense, uniform 25% and 50%: stitching time from the previous candidate and forward time."""
    space, n_tokens = ev.space, tokens.numel()
    forward = {}
    for name, s in (("dense", 0.0), ("uniform_25", 0.25), ("uniform_50", 0.5)):
        g = space.dense if s == 0 else space.uniform(s)
        t = time.perf_counter()
        swapped = ev.stitcher.apply(g)
        stitch = time.perf_counter() - t
        model(input_ids=tokens[:1, :8])  # warm-up
        fwd = forward_s(model, tokens, repeats)
        forward[name] = fwd
        out[name] = {"sparsity": round(space.sparsity(g), 4),
                     "params": sum(p.numel() for p in model.parameters()),
                     "forward_s": round(fwd, 3), "tokens_per_s": round(n_tokens / fwd, 1),
                     "full_stitch_s": round(stitch, 4), "units_swapped": swapped}
    for name in ("uniform_25", "uniform_50"):
        out[name]["speedup_vs_dense"] = round(forward["dense"] / forward[name], 3)
    return forward


def mutation_stitch(ev, forward_50: float) -> dict:
    """A typical search step: from a 50% genome, switch 1-4 pairs of unit levels (cost kept
    roughly equal), and time the stitch."""
    space = ev.space
    rng = random.Random(0)
    base = list(space.uniform(0.5))
    ev.stitcher.apply(tuple(base))
    stitch_times, swaps = [], []
    for _ in range(20):
        g = list(base)
        for _ in range(rng.randint(1, 4)):
            i, j = rng.sample(range(len(g)), 2)
            if g[i] > 1 and g[j] < len(space.levels[j]) - 2:
                g[i] -= 1
                g[j] += 1
        t = time.perf_counter()
        swaps.append(ev.stitcher.apply(tuple(g)))
        stitch_times.append(time.perf_counter() - t)
    mean_stitch = statistics.mean(stitch_times)
    return {"mean_s": round(mean_stitch, 4), "mean_units_swapped": statistics.mean(swaps),
            "fraction_of_50pct_forward": round(mean_stitch / forward_50, 4)}


def main() -> None:
    args = parse_args()

    import torch

    from sparsearch.fitness.data import CalibrationConfig, calibration_tokens
    from sparsearch.fitness.evaluator import Evaluator
    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    calib = CalibrationConfig("text", str(Path(args.data_dir) / "calibration" / "python-docs.txt"),
                              args.sequences, args.seqlen, seed=1)
    tokens = calibration_tokens(calib, model, tok)
    n_tokens = tokens.numel()
    store = SupernetStore.open(args.supernet)
    ev = Evaluator(model, store, tokens, TokenSchedule.of([(1, n_tokens)]), batch_size=args.sequences)

    out = {"model": "smollm2-135m", "tokens_per_forward": n_tokens, "threads": args.threads,
           "dtype": str(next(model.parameters()).dtype)}
    forward = uniform_candidates(ev, model, tokens, args.repeats, out)
    out["mutation_stitch"] = mutation_stitch(ev, forward["uniform_50"])
    t = time.perf_counter()
    score = ev.evaluate(ev.space.uniform(0.5), 0)
    out["evaluate_50"] = {"kl": round(score, 4), "wall_s": round(time.perf_counter() - t, 3),
                          "stitch_plus_bookkeeping_fraction": round(
                              (time.perf_counter() - t - forward["uniform_50"]) / forward["uniform_50"], 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
