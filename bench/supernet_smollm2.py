"""Supernet benchmark on the default model (SmolLM2-135M): build cost and uniform-allocation
perplexity, with and without expectation error accumulation. Prints one JSON object.

    python -m bench.supernet_smollm2 [--data-dir ../shared/data] [--samples 128] [--seqlen 512]
                                   [--eval-tokens 65536] [--out bench/out]

Each build runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_build(args) -> dict:
    import torch

    from sparsearch.fitness.data import CalibrationConfig, calibration_tokens
    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.supernet.build import build_supernet
    from sparsearch.supernet.config import SupernetConfig
    from sparsearch.supernet.models import load_model
    from sparsearch.launch.config import SearchConfig
    from sparsearch.launch.plan import ModelShape, plan

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    calib = CalibrationConfig("text", str(Path(args.data_dir) / "calibration" / "python-docs.txt"),
                              args.samples, args.seqlen, 0)
    tokens = calibration_tokens(calib, model, tok)
    cfg = SupernetConfig(error_accumulation=args.accumulate)
    t0 = time.perf_counter()
    store = build_supernet(model, tokens, args.store, cfg, model_name="smollm2-135m",
                           calibration=calib.describe(), progress=False)
    wall = time.perf_counter() - t0
    levels = sorted({len(u["levels"]) for u in store.manifest["units"].values()})
    planned = plan(ModelShape.from_config(model.config), cfg, samples=args.samples, seqlen=args.seqlen,
                   schedule=TokenSchedule.parse("darwinlm"), search=SearchConfig(engine="uniform", target_sparsity=0.5))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    disk = store.new_bytes / 2**20
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_over_model": round(peak / model_mib, 2),
        "model_mib": round(model_mib, 1),
        "disk_mib": round(disk, 1),
        "files_mib": round(store.size_bytes / 2**20, 1),
        "levels_per_unit": levels,
        "plan": {"disk_mib": planned["supernet"]["disk_mib"], "peak_memory_mib": planned["build"]["peak_memory_mib"],
                 "disk_error": round(planned["supernet"]["disk_mib"] / disk - 1, 4),
                 "peak_memory_error": round(planned["build"]["peak_memory_mib"] / peak - 1, 4)},
    }


def child_ppl(args) -> dict:
    import torch

    from sparsearch.fitness.data import read_text, tokenize_text
    from sparsearch.fitness.metrics import eval_windows, perplexity
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    ids = tokenize_text(read_text(Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw"), tok)
    windows = eval_windows(ids, args.seqlen, args.eval_tokens)
    out = {"eval_tokens": int(windows.numel()), "wikitext_test_tokens": int(ids.numel())}
    if args.store is None:
        out["dense"] = perplexity(model, windows)["perplexity"]
        return out
    stitcher = Stitcher(model, SupernetStore.open(args.store))
    for s in (0.25, 0.5):
        g = stitcher.space.uniform(s)
        stitcher.apply(g)
        out[f"uniform_{s}"] = {"sparsity": round(stitcher.space.sparsity(g), 4),
                               "perplexity": perplexity(model, windows)["perplexity"]}
    return out


def run_child(mode: str, extra: list[str], common: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, *common, *extra],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=65536, help="WikiText-2 test tokens scored (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--child", choices=["build", "ppl"])
    p.add_argument("--store")
    p.add_argument("--accumulate", type=int, default=1)
    args = p.parse_args()
    if args.eval_tokens == 0:
        args.eval_tokens = None
    if args.child:
        fn = child_build if args.child == "build" else child_ppl
        print(json.dumps(fn(args)))
        return
    common = ["--data-dir", args.data_dir, "--samples", str(args.samples), "--seqlen", str(args.seqlen),
              "--eval-tokens", str(args.eval_tokens or 0), "--threads", str(args.threads)]
    result = {"model": "smollm2-135m", "calibration": f"{args.samples}x{args.seqlen} python-docs.txt",
              "threads": args.threads, "ladder": "9 levels (step 0.125) per unit, obs + refit, bf16 store",
              "store_format": "sparsearch-supernet/2 (kept indices + refit output projection)"}
    result["dense"] = run_child("ppl", [], common)
    for name, acc in (("with_accumulation", 1), ("without_accumulation", 0)):
        store = str(Path(args.out) / f"smollm2-v2-{name}")
        result[name] = {"build": run_child("build", ["--store", store, "--accumulate", str(acc)], common)}
        result[name]["wikitext2"] = run_child("ppl", ["--store", store], common)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
