"""Healing benchmark on the default model (SmolLM2-135M): a run's pruned model healed by
``sparsearch heal`` (distillation from the dense model on the calibration text) with LoRA and
full-parameter training at several token counts; WikiText-2 test perplexity and wall time of
each. Prints one JSON object (also written to OUT/heal.json).

    python -m bench.heal_smollm2 --run-dir bench/out/end_to_end_v2/0.5/evolution+knapsack \\
        [--tokens 0,50000,200000,1000000] [--methods lora,full] [--calib text|self] [--eval-tokens 32768]
    python -m bench.heal_smollm2 --prepare-data --tokens 200000 [--out OUT]   # while the search runs

Each (method, tokens) heals a copy of the run's summary under OUT, so the run itself is not
touched; a finished one (its ``heal.json`` exists) is reused, an interrupted one resumes.
Rows with the same token count share one set of training tokens and teacher cache; as these do
not depend on the genome, ``--prepare-data`` makes them from the dense model alone (into
``OUT/data-TOKENS``), so the sampling can run while the search that picks the genome does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


DATA_FROM = "data_from.txt"  # in a row: the sibling row whose training data it copied
SHARED_BY = ("tokens", "seqlen", "teacher_topk", "batch_size")  # HealConfig fields the training data depends on


def heal_row(run_dir: Path, out: Path, method: str, tokens: int, *, lr: float, seqlen: int, calib, heldout,
             log=log) -> dict:
    """Heal the best genome of ``run_dir`` with ``method`` (lora or full) on ``tokens`` tokens into a copy of
    its summary at ``out`` (reused when finished, resumed when interrupted); the row of numbers."""
    from sparsearch.launch.heal import HEAL_SUMMARY, HealConfig, heal
    from sparsearch.supernet.models import load_model

    if not (out / HEAL_SUMMARY).is_file():
        log(f"{run_dir.name}: {method}, {tokens:,} tokens")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "summary.json", out / "summary.json")
        cfg = HealConfig(tokens=tokens, seqlen=seqlen, full=method == "full", lr=lr)
        if tokens:
            share_data(out, cfg, calib, log)
        shutil.rmtree(out / "export-healed", ignore_errors=True)
        heal(out, out / "export-healed", cfg, calib, load=load_model, heldout=heldout,
             resume=(out / "heal").is_dir(), progress=True, log=log)
        shutil.rmtree(out / "export-healed")  # only the numbers are kept
    done = json.loads((out / HEAL_SUMMARY).read_text())
    shared = out / DATA_FROM
    if tokens and (done["settings"]["heal"]["lr"], done["settings"]["heal"]["full"]) != (lr, method == "full"):
        raise SystemExit(f"{out} holds a heal with other settings ({done['settings']['heal']}); use another --out")
    return {"method": method if tokens else "none", "tokens": done["tokens"],
            "lr": done["settings"]["heal"]["lr"] if tokens else None,
            "wikitext2_ppl": round(done["perplexity"]["after"], 2),
            "distill_loss": [round(done["loss"]["first"], 4), round(done["loss"]["last"], 4)] if tokens else None,
            "train_s": done["train_seconds"], "wall_s": done["wall_time_s"],
            "data_from": shared.read_text().strip() if shared.is_file() else None}


def share_data(out: Path, cfg, calib, log=log) -> None:
    """Copy into row ``out`` the training tokens and teacher cache of a sibling row that computed
    them for the same tokens, sequence length, teacher top-k, batch size and calibration source
    (they do not depend on the genome, the method or the learning rate), so the teacher runs once
    per token count; the row's ``data_from`` names the source (its ``wall_s`` then leaves out the
    teacher pass, which the source's includes)."""
    from sparsearch.launch.heal import HEAL_DIR
    from sparsearch.base.atomic import atomic_write

    mine = out / HEAL_DIR / "data.safetensors"
    if mine.is_file():
        return
    source = calib.describe()  # as heal() records it
    for sibling in sorted(out.parent.iterdir()):
        data, settings = sibling / HEAL_DIR / "data.safetensors", sibling / HEAL_DIR / "settings.json"
        if sibling == out or not (data.is_file() and settings.is_file()):
            continue
        s = json.loads(settings.read_text())
        if s["calibration"] == source and all(s["heal"][k] == getattr(cfg, k) for k in SHARED_BY):
            atomic_write(mine, data.read_bytes())
            (out / DATA_FROM).write_text(sibling.name + "\n")
            log(f"training tokens and teacher cache copied from {sibling.name}")
            return


def prepare_data(out: Path, tokens: int, *, seqlen: int, calib, model_spec: str, log=log) -> None:
    """Make the training tokens and teacher cache of ``tokens`` tokens from the dense ``model_spec``
    into ``out`` in the layout of a row's heal folder, for :func:`share_data` to copy into the rows
    (a finished one is kept; an interrupted one starts again)."""
    from sparsearch.launch.heal import HEAL_DIR, HealConfig, training_data
    from sparsearch.base.atomic import atomic_write_json
    from sparsearch.base.settings import as_dict
    from sparsearch.supernet.models import load_model

    cfg = HealConfig(tokens=tokens, seqlen=seqlen)
    heal_dir = out / HEAL_DIR
    if (heal_dir / "settings.json").is_file():
        log(f"{out.name}: already made")
        return
    model, tokenizer = load_model(model_spec)
    training_data(heal_dir / "data.safetensors", cfg, calib, model, tokenizer, resume=False, progress=True, log=log)
    atomic_write_json(heal_dir / "settings.json", {"heal": as_dict(cfg), "model": model_spec,  # last: marks it done
                                                   "calibration": calib.describe()})


def data_configs(data_dir: str, eval_tokens: int, source: str):
    """The calibration source healing trains on (``text``: the runs' own Python-docs text; ``self``:
    sequences sampled from the dense model) and the held-out WikiText-2 test text."""
    from sparsearch.fitness.data import CalibrationConfig
    from sparsearch.launch.heldout import HeldoutConfig

    data = Path(data_dir)
    calib = (CalibrationConfig(source="self") if source == "self" else
             CalibrationConfig(source="text", location=str(data / "calibration" / "python-docs.txt")))
    heldout = HeldoutConfig(text=str(data / "wikitext-2-raw" / "wiki.test.raw"), seqlen=512, tokens=eval_tokens)
    return calib, heldout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", help="a finished search run of smollm2-135m")
    p.add_argument("--prepare-data", action="store_true",
                   help="only make the training data of each token count from the dense model (no run needed)")
    p.add_argument("--tokens", default="0,50000,200000,1000000")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--calib", choices=("text", "self"), default="self",
                   help="training tokens: samples of the dense model (the product's default calibration), "
                        "or the Python-docs calibration text")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "heal"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    calib, heldout = data_configs(args.data_dir, args.eval_tokens, args.calib)
    if args.prepare_data:
        from sparsearch.supernet.models import DEFAULT_MODEL

        for tokens in [int(t) for t in args.tokens.split(",") if int(t)]:
            prepare_data(Path(args.out) / f"data-{tokens}", tokens, seqlen=args.seqlen, calib=calib,
                         model_spec=DEFAULT_MODEL)
        return
    if args.run_dir is None:
        p.error("--run-dir is required (unless --prepare-data)")
    run_dir = Path(args.run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = []
    for method in args.methods.split(","):
        for tokens in [int(t) for t in args.tokens.split(",")]:
            if tokens == 0 and rows and rows[0]["tokens"] == 0:
                continue  # the unhealed model is the same for every method
            out = Path(args.out) / (f"{method}-{tokens}" if tokens else "unhealed")
            rows.append(heal_row(run_dir, out, method, tokens, lr=args.full_lr if method == "full" else args.lora_lr,
                                 seqlen=args.seqlen, calib=calib, heldout=heldout))
            log(json.dumps(rows[-1]))
    unhealed = next((r["wikitext2_ppl"] for r in rows if r["tokens"] == 0), None)
    report = {"model": summary["model"], "run_dir": str(run_dir.absolute()), "engine": summary["engine"],
              "sparsity": round(summary["sparsity"], 4), "calibration": calib.location or calib.source,
              "seqlen": args.seqlen, "eval_tokens": args.eval_tokens, "threads": args.threads, "results": rows,
              "ppl_over_unhealed": {f"{r['method']}-{r['tokens']}": round(r["wikitext2_ppl"] / unhealed, 3)
                                    for r in rows if unhealed and r["tokens"]}}
    text = json.dumps(report, indent=1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "heal.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
