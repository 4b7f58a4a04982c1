"""The default main job end to end on the default model (SmolLM2-135M), as a user runs it:
``python search.py`` at each target sparsity (the first target samples the calibration text and
builds the supernet, later targets reuse it), then the held-out perplexity of dense, uniform, the
knapsack start and the chosen genome on WikiText-2 test and on texts of other domains that every
machine has without the network (:mod:`bench.heldout_texts`; none is a calibration, fitness or
validation source). Prints one JSON object (also written to OUT/default_job.json): per target,
the wall time of each phase (from the run's ``summary.json``), the evaluations, the validation
candidates and which won, and the perplexities with their ratio to uniform.

    python -m bench.default_job_smollm2 [--out bench/out/default-job] [--targets 0.5,0.25]
        [--seed 0] [--supernet DIR] [--eval-tokens 16384] [--data-dir ../shared/data] [-- EXTRA search.py FLAGS]

A target whose ``summary.json`` exists under OUT is not run again (an interrupted benchmark
continues); measured perplexities are kept in OUT/perplexities.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.heldout_texts import TEXTS, read

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_job(out: Path, supernet: Path, target: float, seed: int, extra: list[str]) -> dict:
    """``python search.py`` into OUT/<target> with the supernet in ``supernet`` (built there by the
    first job if it is not finished); its summary."""
    run_dir = out / f"{target:g}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, str(ROOT / "search.py"), "--run-dir", str(run_dir), "--supernet",
               str(supernet), "--target-sparsity", str(target), "--seed", str(seed), *extra]
        log(" ".join(cmd[1:]))
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout carries only the JSON
        log(f"target {target:g}: {time.perf_counter() - started:.0f} s")
    return json.loads(summary.read_text())


def genomes_of(summary: dict) -> dict[str, list[int]]:
    """The genomes whose perplexity the benchmark reports."""
    out = {"uniform": summary["uniform"]["genome"]}
    if "knapsack" in summary.get("baselines", {}):
        out["knapsack"] = summary["baselines"]["knapsack"]["genome"]
    out["chosen"] = summary["best_genome"]
    return out


def perplexities(summary: dict, data_dir: str, eval_tokens: int, cache_file: Path) -> dict[str, dict[str, float]]:
    """Perplexity of dense and of each genome of ``summary`` on every held-out text (cached per genome)."""
    from sparsearch.fitness.data import tokenize_text
    from sparsearch.fitness.metrics import eval_windows, perplexity
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    model, tokenizer = load_model(summary["model"])
    stitcher = Stitcher(model, SupernetStore.open(summary["supernet"]))
    genomes = {"dense": list(stitcher.space.dense), **genomes_of(summary)}
    windows = None
    out = {}
    for name, genome in genomes.items():
        key = hashlib.sha256(json.dumps([summary["supernet"], genome, eval_tokens]).encode()).hexdigest()
        if key not in cache:
            if windows is None:
                windows = {t: eval_windows(tokenize_text(read(t, data_dir), tokenizer), 512, eval_tokens) for t in TEXTS}
            stitcher.apply(tuple(genome))
            cache[key] = {t: round(perplexity(model, w)["perplexity"], 3) for t, w in windows.items()}
            cache_file.write_text(json.dumps(cache))
            log(f"{name}: {cache[key]}")
        out[name] = cache[key]
    return out


def report(summary: dict, ppl: dict[str, dict[str, float]]) -> dict:
    uniform = ppl["uniform"]
    validation = summary.get("validation") or {}
    return {
        "phases_s": summary.get("timings", {}),
        "wall_time_s": summary.get("wall_time_s"),
        "evaluations": summary["evaluations"],
        "sparsity": summary["sparsity"],
        "chosen_candidate": validation.get("chosen"),
        "validation": {c["name"]: round(c["kl"], 5) for c in validation.get("candidates", [])},
        "perplexity": ppl,
        "ratio_to_uniform": {name: {t: round(v / uniform[t], 3) for t, v in row.items()}
                             for name, row in ppl.items() if name != "dense"},
        "chosen_vs_knapsack": ({t: round(ppl["chosen"][t] / ppl["knapsack"][t], 3) for t in TEXTS}
                               if "knapsack" in ppl else None),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "default-job"))
    p.add_argument("--targets", default="0.5,0.25")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supernet", help="a finished supernet of the default job's settings to reuse (default: "
                   "OUT/supernet, sampled and built by the first target's job)")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("extra", nargs="*", help="flags passed on to search.py (after --)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": "smollm2-135m", "seed": args.seed, "supernet_reused": bool(args.supernet), "eval_tokens": args.eval_tokens, "texts": list(TEXTS),
              "extra_flags": args.extra, "targets": {}}
    for target in (float(t) for t in args.targets.split(",")):
        summary = run_job(out, Path(args.supernet) if args.supernet else out / "supernet", target, args.seed,
                          args.extra)
        ppl = perplexities(summary, args.data_dir, args.eval_tokens, out / "perplexities.json")
        result["targets"][f"{target:g}"] = report(summary, ppl)
    text = json.dumps(result, indent=1)
    (out / "default_job.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
