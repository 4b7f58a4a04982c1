"""End-to-end benchmark on the default model (SmolLM2-135M): at each target sparsity, the one-shot
baselines (uniform, OWL, FLAP) and the searched genomes (evolution, TPE), all on the same supernet
and budget, each run through the product's own ``sparsearch search``; then the WikiText-2 test
perplexity of every genome. Prints one JSON object (also written to OUT/end_to_end.json).

    python -m bench.end_to_end_smollm2 --supernet bench/out/smollm2-with_accumulation \\
        [--targets 0.25,0.5] [--methods uniform,owl,flap,knapsack,evolution+knapsack,tpe,nsga2]
        [--generations 30] [--offspring 16] [--trials 120] [--eval-tokens 32768]

A method ``ENGINE+START`` runs the search ENGINE from the one-shot allocation START (``--init``);
a plain search name starts from ``--init``.

A run whose ``summary.json`` already exists under OUT is reused, so an interrupted benchmark continues;
measured perplexities are kept in OUT/perplexities.json, so invocations per target can share OUT.
A one-shot START of an ``ENGINE+START`` method that is not in ``--methods`` gets its row from that
run (the same allocation: for knapsack, the same probes and exact solve), without a wall time of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINES = ("uniform", "owl", "flap", "knapsack")
SEARCHES = ("evolution", "tpe", "nsga2", "tyr")


def engine_and_init(method: str, default_init: str) -> tuple[str, str | None]:
    """``evolution+knapsack``: engine evolution started from knapsack; a plain search name starts
    from ``default_init``; a baseline has no start."""
    engine, _, init = method.partition("+")
    return engine, (init or default_init) if engine in SEARCHES else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--targets", default="0.25,0.5")
    p.add_argument("--methods", default=",".join(BASELINES + SEARCHES))
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--offspring", type=int, default=16)
    p.add_argument("--schedule", default="4:256,2:1024,1:2048")
    p.add_argument("--trials", type=int, default=120)
    p.add_argument("--init", default="best", help="where evolution starts (tpe enqueues the same genome)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "end_to_end"))
    return p.parse_args()


def run_searches(args, targets: list[float], methods: list[str], out: Path) -> dict[float, dict[str, dict]]:
    """Each method at each target through ``sparsearch search`` (a finished run is reused): their summaries."""
    from sparsearch.launch.cli import main as cli

    calib = str(Path(args.data_dir) / "calibration" / "python-docs.txt")
    summaries: dict[float, dict[str, dict]] = {}
    for target in targets:
        for method in methods:
            run_dir = out / f"{target}" / method
            if not (run_dir / "summary.json").is_file():
                log(f"{method} at {target}")
                engine, init = engine_and_init(method, args.init)
                extra = ["--init", init] if init else []
                code = cli(["search", "--supernet", args.supernet, "--run-dir", str(run_dir), "--engine", engine,
                            "--target-sparsity", str(target), "--generations", str(args.generations),
                            "--offspring", str(args.offspring), "--trials", str(args.trials),
                            "--schedule", args.schedule, "--calib-text", calib, "--calib-seqlen", "512",
                            "--quiet", *extra])
                if code:
                    raise SystemExit(code)
            summaries.setdefault(target, {})[method] = json.loads((run_dir / "summary.json").read_text())
    return summaries


def perplexity_of(model, stitcher, windows, cache_file: Path):
    """``ppl(genome)``: WikiText-2 perplexity of a stitched genome, kept in ``cache_file`` between
    invocations (keyed by supernet, evaluation tokens and genome)."""
    from sparsearch.base.atomic import atomic_write_json
    from sparsearch.fitness.metrics import perplexity

    cache: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key_prefix = f"{stitcher.store.fingerprint} {windows.numel()}"

    def ppl(genome: list[int]) -> float:
        key = f"{key_prefix} {','.join(map(str, genome))}"
        if key not in cache:
            stitcher.apply(tuple(genome))
            cache[key] = round(perplexity(model, windows)["perplexity"], 2)
            log(f"perplexity {cache[key]} (sparsity {stitcher.space.sparsity(genome):.4f})")
            if cache_file.is_file():  # another invocation (another target) may have added its own
                cache.update({k: v for k, v in json.loads(cache_file.read_text()).items() if k not in cache})
            atomic_write_json(cache_file, cache)
        return cache[key]

    return ppl


def method_rows(summaries: dict[str, dict], args, ppl, space) -> dict[str, dict]:
    """One row per method at one target, plus the one-shot starts that ran only inside a search."""
    from sparsearch.search.knapsack import probes

    rows = {}
    for method, s in summaries.items():
        rows[method] = {"sparsity": round(s["sparsity"], 4), "kl": round(s["fitness"]["kl"], 4),
                        "wikitext2_ppl": ppl(s["best_genome"]), "evaluations": s["evaluations"],
                        "wall_time_s": s["wall_time_s"]}
        if engine_and_init(method, args.init)[1]:
            rows[method]["started_from"] = min(s["baselines"], key=lambda n: s["baselines"][n]["kl"]) \
                if s.get("baselines") else "uniform"
    for method, s in summaries.items():
        start = method.partition("+")[2]
        if start in BASELINES and start not in rows and start in s.get("baselines", {}):
            # a one-shot start that was not run on its own: the same allocation, computed (and scored
            # on the final stage) inside the search's run; its time is part of that run's
            b = s["baselines"][start]
            rows[start] = {"sparsity": round(b["sparsity"], 4), "kl": round(b["kl"], 4),
                           "wikitext2_ppl": ppl(b["genome"]),
                           "evaluations": len(probes(space)) + 1 if start == "knapsack" else 1,
                           "wall_time_s": None, "computed_in": method}
    return rows


def target_entry(rows: dict[str, dict], args) -> dict:
    """The rows of one target, and each search's perplexity over uniform's and the best baseline's."""
    entry: dict = {"methods": rows}
    base = [m for m in rows if m in BASELINES and m != "uniform"]
    best_base = min(base, key=lambda m: rows[m]["wikitext2_ppl"]) if base else None
    for m in rows:
        if not engine_and_init(m, args.init)[1]:
            continue
        if "uniform" in rows:
            entry[f"{m}_over_uniform"] = round(rows[m]["wikitext2_ppl"] / rows["uniform"]["wikitext2_ppl"], 3)
        if best_base:
            entry[f"{m}_over_best_baseline"] = round(rows[m]["wikitext2_ppl"] / rows[best_base]["wikitext2_ppl"], 3)
    entry["best_baseline"] = best_base
    return entry


def main() -> None:
    args = parse_args()

    import torch

    from sparsearch.fitness.data import read_text, tokenize_text
    from sparsearch.fitness.metrics import eval_windows
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    targets = [float(t) for t in args.targets.split(",")]
    summaries = run_searches(args, targets, args.methods.split(","), out)

    model, tok = load_model("smollm2-135m")
    windows = eval_windows(tokenize_text(read_text(Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw"), tok),
                           512, args.eval_tokens)
    stitcher = Stitcher(model, SupernetStore.open(args.supernet))
    ppl = perplexity_of(model, stitcher, windows, out / "perplexities.json")
    report: dict = {"model": "smollm2-135m", "supernet": args.supernet, "eval_tokens": int(windows.numel()),
                    "search": {"generations": args.generations, "offspring": args.offspring,
                               "schedule": args.schedule, "trials": args.trials, "init": args.init},
                    "dense_wikitext2_ppl": ppl(list(stitcher.space.dense)), "targets": {}}
    for target in targets:
        rows = method_rows(summaries[target], args, ppl, stitcher.space)
        report["targets"][str(target)] = target_entry(rows, args)
    text = json.dumps(report, indent=1)
    (out / "end_to_end.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
