"""Search benchmark on the default model (SmolLM2-135M): KL fitness of the uniform allocation vs the
genome an engine finds at a target sparsity, the evaluations and wall time it took, and the
WikiText-2 perplexity of both. Prints one JSON object.

    python -m bench.search_smollm2 --supernet bench/out/smollm2-with_accumulation \\
        [--engine evolution] [--target-sparsity 0.5] [--generations 30] [--eval-tokens 65536]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--engine", default="evolution")
    p.add_argument("--target-sparsity", type=float, default=0.5)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--schedule", default="4:512,2:1024,1:2048")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--run-dir", default=str(ROOT / "bench" / "out" / "search"))
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    import torch

    from sparsearch.fitness.data import read_text, tokenize_text
    from sparsearch.fitness.metrics import eval_windows, perplexity
    from sparsearch.launch.cli import main as cli
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(2)
    calib = str(Path(args.data_dir) / "calibration" / "python-docs.txt")
    run_dir = Path(args.run_dir) / f"{args.engine}-{args.target_sparsity}"
    code = cli(["search", "--supernet", args.supernet, "--run-dir", str(run_dir), "--engine", args.engine,
                "--target-sparsity", str(args.target_sparsity), "--generations", str(args.generations),
                "--trials", str(args.trials), "--schedule", args.schedule, "--calib-text", calib,
                "--calib-seqlen", "512", "--quiet"] + (["--resume"] if args.resume else []))
    if code:
        raise SystemExit(code)
    summary = json.loads((run_dir / "summary.json").read_text())
    model, tok = load_model("smollm2-135m")
    windows = eval_windows(tokenize_text(read_text(Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw"), tok),
                           512, args.eval_tokens)
    stitcher = Stitcher(model, SupernetStore.open(summary["supernet"]))
    ppl = {}
    for name, genome in (("uniform", summary["uniform"]["genome"]), ("searched", summary["best_genome"])):
        stitcher.apply(tuple(genome))
        ppl[name] = perplexity(model, windows)["perplexity"]
    print(json.dumps({
        "model": "smollm2-135m", "engine": args.engine, "target_sparsity": args.target_sparsity,
        "schedule": args.schedule, "generations": args.generations,
        "uniform": {"sparsity": round(summary["uniform"]["sparsity"], 4), "kl": round(summary["uniform"]["kl"], 4),
                    "wikitext2_ppl": round(ppl["uniform"], 2)},
        "searched": {"sparsity": round(summary["sparsity"], 4), "kl": round(summary["fitness"]["kl"], 4),
                     "wikitext2_ppl": round(ppl["searched"], 2)},
        "kl_ratio": round(summary["fitness"]["kl"] / summary["uniform"]["kl"], 3),
        "ppl_ratio": round(ppl["searched"] / ppl["uniform"], 3),
        "evaluations": summary["evaluations"], "search_wall_time_s": summary["wall_time_s"],
        "eval_tokens": int(windows.numel()),
    }, indent=1))


if __name__ == "__main__":
    main()
