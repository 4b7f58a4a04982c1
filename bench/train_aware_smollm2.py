"""Training-aware selection (DarwinLM) against plain KL selection at equal search time, judged after
healing, on the default model (SmolLM2-135M). Prints one JSON object (also OUT/train_aware.json).

    python -m bench.train_aware_smollm2 --supernet bench/out/v3/smollm2-v2-with_accumulation \\
        --kl-run bench/out/end_to_end_v2/0.5/evolution+knapsack \\
        [--schedule 4:256,2:1024:4096,1:2048:8192] [--train-lr 1e-4] [--train-batch-size 1] \\
        [--heal full:200000] [--heal-out bench/out/heal] [--out bench/out/train_aware]

The KL run is a ``sparsearch search`` with evolution (``bench.end_to_end_smollm2`` makes it),
finished or still running: run both at once to give them the same share of the machine. The
training-aware run searches with the same engine, start, target, offspring, calibration and seed
on ``--schedule``, whose stages train every candidate entering them before scoring it; it runs one
generation per invocation (``--resume --generations g``) until the KL run has finished and its own
search time (the engine's own clock, from the checkpoint: the start's probes and every
generation, not the loading) has reached the KL run's. Its first stage does not train, so the
knapsack probes, and with them the start, are the KL run's. Both best genomes are then healed the same way
(``bench.heal_smollm2``'s rows, under ``--heal-out``, so the KL run's healed row is shared with
that benchmark) and scored on WikiText-2 test text. Fitness values of the two runs are not
comparable (the trained run scores trained copies); perplexity before and after healing is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.heal_smollm2 import data_configs, heal_row, log

ROOT = Path(__file__).resolve().parents[1]


def search_seconds(run_dir: Path) -> float:
    """The engine's own clock of a run (the checkpoint's, summed over resumes; 0 before the first)."""
    path = run_dir / "checkpoint.json"
    return json.loads(path.read_text())["wall_time_s"] if path.is_file() else 0.0


def steps(run_dir: Path) -> int:
    return json.loads((run_dir / "checkpoint.json").read_text())["step"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--kl-run", required=True, help="a finished evolution run on this supernet")
    p.add_argument("--schedule", default="4:256,2:1024:4096,1:2048:8192")
    p.add_argument("--offspring", default="16", help="the KL run's (bench/end_to_end_smollm2.py: 16)")
    p.add_argument("--init", default="knapsack", help="the KL run's start")
    p.add_argument("--calib-seqlen", default="512", help="the KL run's")
    p.add_argument("--train-lr", default="1e-4")
    p.add_argument("--train-batch-size", default="1")
    p.add_argument("--heal", default="full:200000", help="METHOD:TOKENS healing both genomes (none: search only)")
    p.add_argument("--heal-lr", type=float, default=1e-4)
    p.add_argument("--heal-seqlen", type=int, default=512)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heal-out", default=str(ROOT / "bench" / "out" / "heal"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "train_aware"))
    return p.parse_args()


def train_aware_search(args, kl_run: Path, run: Path, calib) -> None:
    """The training-aware search, one generation per invocation, until it has searched as long as
    the (finished) KL run."""
    from sparsearch.launch.cli import main as cli

    kl_settings = json.loads((kl_run / "settings.json").read_text())
    flags = ["search", "--supernet", args.supernet, "--run-dir", str(run), "--engine", kl_settings["engine"],
             "--target-sparsity", str(kl_settings["target_sparsity"]), "--init", args.init, "--offspring", args.offspring,
             "--seed", str(kl_settings["seed"]), "--schedule", args.schedule, "--train-lr", args.train_lr,
             "--train-batch-size", args.train_batch_size, "--calib-text", calib.location,
             "--calib-seqlen", args.calib_seqlen, "--quiet"]
    generations = steps(run) if (run / "checkpoint.json").is_file() else 0
    while True:
        kl_finished = (kl_run / "summary.json").is_file()
        if generations and kl_finished and search_seconds(run) >= search_seconds(kl_run):
            break
        generations += 1
        log(f"training-aware search: generation {generations} ({search_seconds(run):.0f} s; "
            f"the KL run: {search_seconds(kl_run):.0f} s{'' if kl_finished else ', running'})")
        resume = ["--resume"] if (run / "checkpoint.json").is_file() else []
        if cli([*flags, "--generations", str(generations), *resume]):
            raise SystemExit("the training-aware search failed")


def healed_rows(args, runs: dict[str, Path], calib, heldout) -> dict[str, dict]:
    """Both best genomes healed the same way (``--heal``), with their searches' numbers."""
    method, tokens = args.heal.split(":")
    heal_out = Path(args.heal_out)
    rows = {}
    for name, run_dir in runs.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        label = f"{method}-{tokens}" if name == "kl" else f"train-aware-{method}-{tokens}-lr{args.heal_lr:g}"
        row = heal_row(run_dir, heal_out / label, method, int(tokens), lr=args.heal_lr,
                       seqlen=args.heal_seqlen, calib=calib, heldout=heldout)
        done = json.loads((heal_out / label / "heal.json").read_text())
        settings = json.loads((run_dir / "settings.json").read_text())
        rows[name] = {"schedule": settings["schedule"], "generations": steps(run_dir),
                      "evaluations": summary["evaluations"], "search_s": round(search_seconds(run_dir), 1),
                      "best_genome": summary["best_genome"], "sparsity": round(summary["sparsity"], 4),
                      "wikitext2_ppl_unhealed": round(done["perplexity"]["before"], 2), "healed": row}
    return rows


def main() -> None:
    args = parse_args()

    import torch

    torch.set_num_threads(args.threads)
    kl_run, out = Path(args.kl_run), Path(args.out)
    calib, heldout = data_configs(args.data_dir, args.eval_tokens, "text")  # as measured in the README
    run = out / "run"
    train_aware_search(args, kl_run, run, calib)
    if args.heal == "none":
        return
    rows = healed_rows(args, {"kl": kl_run, "train_aware": run}, calib, heldout)
    kl_summary = json.loads((kl_run / "summary.json").read_text())
    same = rows["kl"]["best_genome"] == rows["train_aware"]["best_genome"]
    report = {"model": kl_summary["model"], "supernet": args.supernet, "train_lr": float(args.train_lr),
              "train_batch_size": int(args.train_batch_size), "heal": args.heal, "eval_tokens": args.eval_tokens,
              "threads": args.threads, "runs": rows, "same_genome": same,
              "healed_ppl_train_aware_over_kl": round(rows["train_aware"]["healed"]["wikitext2_ppl"]
                                                      / rows["kl"]["healed"]["wikitext2_ppl"], 3)}
    text = json.dumps(report, indent=1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_aware.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
