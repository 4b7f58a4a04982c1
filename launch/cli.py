"""The ``sparsearch`` command line. Every subcommand accepts ``--config PRESET.yaml`` (keys are
flag names; flags given on the command line override them) and exits with status 2 and one
``sparsearch: error: ...`` line on bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from sparsearch.launch.config import BASELINES, ENGINES, INITS
from sparsearch.search.errors import SparsearchError

DEFAULT_MODEL = "smollm2-135m"


# -- argument groups shared by subcommands ------------------------------------------------------
def _model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", default=None if required else DEFAULT_MODEL, required=required,
                   help=f"alias ({DEFAULT_MODEL}), model folder, .gguf file or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: as stored)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")


def _calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--calib-text", metavar="FILE", help="calibration text file")
    src.add_argument("--calib-dataset", metavar="SPEC", help="datasets spec NAME[:CONFIG[:SPLIT[:FIELD]]]")
    src.add_argument("--calib-self", action="store_true", help="sample calibration text from the dense model (default)")
    g.add_argument("--calib-samples", type=int, default=128, metavar="N", help="sequences (default 128)")
    g.add_argument("--calib-seqlen", type=int, default=512, metavar="T", help="tokens per sequence (default 512)")


def _supernet_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("supernet")
    g.add_argument("--attn-ladder", default="0.125", help="attention levels: a step or a comma list (default 0.125)")
    g.add_argument("--mlp-ladder", default="0.125", help="MLP levels: a step or a comma list (default 0.125)")
    g.add_argument("--mlp-alignment", type=int, default=32, help="kept MLP channels are multiples of this")
    g.add_argument("--balanced-heads", action="store_true", help="same number of query heads in every kept KV group")
    g.add_argument("--criterion", default="obs", choices=["obs", "magnitude"], help="unit pruning criterion")
    g.add_argument("--no-refit", dest="refit", action="store_false", help="skip the least-squares refit")
    g.add_argument("--damping", type=float, default=0.01, help="relative Hessian damping")
    g.add_argument("--no-error-accumulation", dest="error_accumulation", action="store_false",
                   help="prune every layer on dense activations")
    g.add_argument("--store-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--servable", action="store_true",
                   help="only shapes vLLM's DeciLM (nemotron-nas) serves: attention kept or removed, MLP widths on 256")
    g.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")


def _search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--target-sparsity", type=float, default=0.5, help="fraction of prunable parameters removed")
    g.add_argument("--engine", default="evolution", choices=list(ENGINES),
                   help="search engine (default evolution), or a one-shot baseline: uniform, owl, flap")
    g.add_argument("--init", default="uniform", choices=list(INITS),
                   help="where a search starts: a baseline's allocation, or best (the baseline with the lowest KL)")
    g.add_argument("--baseline-samples", type=int, default=32, help="calibration sequences OWL/FLAP score")
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    g.add_argument("--cost", default="params", choices=["params", "flops"], help="what the budget limits")
    g.add_argument("--tolerance", type=float, default=0.01, help="budget band below the limit (fraction of dense)")
    g.add_argument("--schedule", default="4:512,2:1024,1:2048",
                   help="fitness stages survivors:tokens[:train_tokens],... or darwinlm | darwinlm-train | tyr")
    g.add_argument("--generations", type=int, default=20, help="evolution/nsga2/tyr generations (tyr: per round)")
    g.add_argument("--offspring", type=int, default=8, help="evolution/tyr offspring per generation")
    g.add_argument("--max-flips", type=int, default=3, help="level switches per mutation")
    g.add_argument("--population", type=int, default=24, help="nsga2 population")
    g.add_argument("--blocks", type=int, default=0, help="nsga2 divide-and-conquer layer blocks (0 = off)")
    g.add_argument("--trials", type=int, default=200, help="tpe trials")
    g.add_argument("--storage", help="tpe: Optuna storage URL (default: a journal file in the run directory)")
    g.add_argument("--study-name", default="sparsearch", help="tpe study name")
    g.add_argument("--budget-mode", default="repair", choices=["repair", "constraint"], help="tpe budget handling")
    g.add_argument("--rounds", type=int, default=4, help="tyr coarse-to-fine rounds")
    g.add_argument("--topk", type=int, default=64, help="teacher logits kept per token for KL")
    g.add_argument("--eval-batch-size", type=int, default=4, help="sequences per scoring forward")
    g.add_argument("--workers", type=int, default=0,
                   help="Ray evaluator actors (default: one per GPU on multi-GPU machines, else in process)")
    g.add_argument("--ray-address", help="join this Ray cluster (or 'auto'; also $RAY_ADDRESS) for evaluation")
    g.add_argument("--eval-text", metavar="FILE",
                   help="held-out text: the summary gets the perplexity of the best and the uniform genome on it")
    g.add_argument("--eval-seqlen", type=int, default=512, help="window length for --eval-text")
    g.add_argument("--eval-tokens", type=int, default=65536, metavar="N",
                   help="score the first N tokens of --eval-text (0 = all)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PRESET.yaml", help="YAML file of flag values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsearch", description="Search per-layer structured sparsity of decoder LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("supernet", help="build (or resume) a supernet of per-unit pruning variants")
    _model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="supernet directory")
    _calib_args(p)
    _supernet_args(p)
    _common(p)

    p = sub.add_parser("eval", help="held-out perplexity of a model (or of a uniform allocation); prints JSON")
    _model_args(p, required=True)
    p.add_argument("--data", required=True, metavar="FILE", help="held-out text file")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the first N tokens")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--supernet", metavar="DIR", help="stitch from this supernet before evaluating")
    p.add_argument("--target-sparsity", type=float, help="with --supernet: the uniform allocation at this sparsity")
    _common(p)

    p = sub.add_parser("search", help="search the per-unit levels of a supernet under a budget")
    _model_args(p)
    p.add_argument("--supernet", required=True, metavar="DIR", help="a finished supernet of --model")
    p.add_argument("--run-dir", required=True, metavar="R")
    _search_args(p)
    _calib_args(p)
    _common(p)

    p = sub.add_parser("run", help="build or reuse the supernet, search, and write the run directory")
    _model_args(p)
    p.add_argument("--run-dir", default="runs/default", metavar="R")
    p.add_argument("--supernet", metavar="DIR", help="supernet directory (default: R/supernet)")
    p.add_argument("--no-export", action="store_true", help="do not export the best model to R/export")
    _search_args(p)
    _calib_args(p)
    _supernet_args(p)
    _common(p)

    p = sub.add_parser("export", help="write the best (or a Pareto) genome of a run as a smaller HF model")
    p.add_argument("--run-dir", required=True, metavar="R")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--genome", default="best", help="best | pareto:I (the I-th point of the run's Pareto front)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--config", metavar="PRESET.yaml", help="YAML file of flag values")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="render the plots of a run directory again")
    p.add_argument("--run-dir", required=True, metavar="R")
    p.add_argument("--config", metavar="PRESET.yaml", help="YAML file of flag values")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        preset = _read_preset(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        known = {a.dest for a in sub._actions}
        unknown = sorted(set(preset) - known)
        if unknown:
            raise SparsearchError(f"{args.config}: unknown keys {', '.join(unknown)} for '{args.command}'")
        sub.set_defaults(**preset)
        args = parser.parse_args(argv)
    return args


def _read_preset(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SparsearchError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SparsearchError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SparsearchError(f"{p} must be a mapping of flag names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


# -- helpers turning flags into typed configs ------------------------------------------------
def _device(name: str):
    import torch

    if name == "auto":
        return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    return torch.device(name)


def _supernet_config(args: argparse.Namespace):
    from sparsearch.supernet.config import SupernetConfig

    servable = getattr(args, "servable", False)
    return SupernetConfig(
        attn_ladder="0,1" if servable else args.attn_ladder,
        mlp_ladder=args.mlp_ladder,
        mlp_alignment=256 if servable else args.mlp_alignment,
        balanced_heads=args.balanced_heads or servable,
        criterion=args.criterion,
        refit=args.refit,
        damping=args.damping,
        error_accumulation=args.error_accumulation,
        store_dtype=args.store_dtype,
        batch_size=args.batch_size,
    )


def _calibration_config(args: argparse.Namespace):
    from sparsearch.fitness.data import CalibrationConfig

    if args.calib_text:
        source, location = "text", args.calib_text
    elif args.calib_dataset:
        source, location = "dataset", args.calib_dataset
    else:
        source, location = "self", None
    return CalibrationConfig(source, location, args.calib_samples, args.calib_seqlen, args.seed)


def _load(args: argparse.Namespace):
    from sparsearch.supernet.models import load_model

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    return load_model(args.model, dtype=args.dtype, device=_device(args.device))


def _check_files(*paths: str | None) -> None:
    """Fail on a missing input file before any model is loaded."""
    for p in paths:
        if p and not Path(p).is_file():
            raise SparsearchError(f"text file not found: {p}")


def _describe(store) -> str:
    units = store.manifest["units"]
    levels = {len(u["levels"]) for u in units.values()}
    secs = store.manifest.get("build_seconds")
    return (f"supernet: {store.path} ({len(units)} units, {'/'.join(map(str, sorted(levels)))} levels each, "
            f"{store.size_bytes / 2**20:.1f} MiB on disk" + (f", built in {secs:.0f} s)" if secs else ")"))


# -- commands -----------------------------------------------------------------------------------
def cmd_supernet(args: argparse.Namespace) -> int:
    from sparsearch.launch.pipeline import ensure_supernet

    _supernet_config(args), _calibration_config(args)  # validate before loading anything
    _check_files(args.calib_text)
    model, tokenizer = _load(args)
    store = ensure_supernet(model, tokenizer, Path(args.out), _supernet_config(args), _calibration_config(args),
                            model_name=args.model, progress=not args.quiet, log=_log(args))
    print(_describe(store))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sparsearch.fitness.data import read_text, tokenize_text
    from sparsearch.fitness.metrics import eval_windows, perplexity
    from sparsearch.supernet.store import SupernetStore

    if (args.supernet is None) != (args.target_sparsity is None):
        raise SparsearchError("--supernet and --target-sparsity go together")
    text = read_text(args.data)
    if args.supernet:
        SupernetStore.open(args.supernet)  # refuse a missing or unfinished supernet before loading
    model, tokenizer = _load(args)
    result: dict[str, Any] = {"model": args.model, "data": args.data, "seqlen": args.seqlen}
    if args.supernet:
        from sparsearch.supernet.stitch import Stitcher

        stitcher = Stitcher(model, SupernetStore.open(args.supernet))
        genome = stitcher.space.uniform(args.target_sparsity)
        stitcher.apply(genome)
        result.update(genome=list(genome), sparsity=stitcher.space.sparsity(genome))
    windows = eval_windows(tokenize_text(text, tokenizer), args.seqlen, args.max_tokens)
    if windows.shape[0] == 0:
        raise SparsearchError(f"{args.data} has fewer than {args.seqlen} tokens")
    result.update(perplexity(model, windows, batch_size=args.eval_batch_size, progress=not args.quiet))
    result["params"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(result))
    return 0


def _search_config(args: argparse.Namespace):
    from sparsearch.launch.config import SearchConfig

    return SearchConfig(
        engine=args.engine, target_sparsity=args.target_sparsity, cost=args.cost, tolerance=args.tolerance,
        schedule=args.schedule, seed=args.seed, generations=args.generations, offspring=args.offspring,
        max_flips=args.max_flips, population=args.population, blocks=args.blocks, trials=args.trials,
        storage=args.storage, study_name=args.study_name, budget_mode=args.budget_mode, rounds=args.rounds,
        topk=args.topk, eval_batch_size=args.eval_batch_size, init=args.init, baseline_samples=args.baseline_samples,
    )


def _log(args: argparse.Namespace):
    return (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _heldout_text(args: argparse.Namespace) -> str | None:
    """The --eval-text file's text, read before the search so that a bad path fails early."""
    from sparsearch.fitness.data import read_text

    if not args.eval_text:
        return None
    if args.eval_seqlen < 2 or args.eval_tokens < 0:
        raise SparsearchError("--eval-seqlen must be >= 2 and --eval-tokens >= 0")
    return read_text(args.eval_text)


def _heldout(args: argparse.Namespace, text: str, model, tokenizer, found: dict) -> dict[str, Any]:
    """Perplexity on held-out text of the best genome (the model as the search left it) and of
    the uniform genome; the model is stitched back to the best genome."""
    from sparsearch.fitness.data import tokenize_text
    from sparsearch.fitness.metrics import eval_windows, perplexity

    windows = eval_windows(tokenize_text(text, tokenizer), args.eval_seqlen, args.eval_tokens or None)
    if windows.shape[0] == 0:
        raise SparsearchError(f"{args.eval_text} has fewer than {args.eval_seqlen} tokens")
    _log(args)(f"held-out perplexity on {windows.shape[0]} windows of {args.eval_text}")
    best = perplexity(model, windows, batch_size=args.eval_batch_size)
    stitcher = found["stitcher"]
    stitcher.apply(tuple(found["uniform_genome"]))
    uniform = perplexity(model, windows, batch_size=args.eval_batch_size)
    stitcher.apply(tuple(found["result"].best_genome))
    return {"data": args.eval_text, "tokens": best["tokens"], "seqlen": args.eval_seqlen,
            "perplexity": best["perplexity"], "uniform_perplexity": uniform["perplexity"]}


def _search_and_report(args, model, tokenizer, store, started: float) -> int:
    from sparsearch.launch import pipeline, report

    run_dir = Path(args.run_dir)
    if args.resume and not (run_dir / "checkpoint.json").is_file() and args.engine not in BASELINES:
        _log(args)(f"nothing to resume in {run_dir}: starting a new run")
    from sparsearch.supernet.config import SupernetConfig

    workers = args.workers
    if workers < 0:
        raise SparsearchError(f"--workers must be >= 0, got {workers}")
    heldout_text = _heldout_text(args)
    if workers == 0:
        import torch

        workers = max(1, torch.cuda.device_count())
    found = pipeline.search(model, tokenizer, store, _search_config(args), calib=_calibration_config(args),
                            supernet_cfg=SupernetConfig.from_dict(store.manifest["config"]), run_dir=run_dir,
                            resume=args.resume, model_spec=args.model, workers=workers,
                            ray_address=args.ray_address or os.environ.get("RAY_ADDRESS"),
                            log=_log(args), progress=not args.quiet)
    extra: dict[str, Any] = {"workers": workers, "nodes": found["nodes"]}
    if heldout_text is not None:
        extra["heldout"] = _heldout(args, heldout_text, model, tokenizer, found)
    summary = report.build_summary(found, model=args.model, engine=args.engine, target_sparsity=args.target_sparsity,
                                   wall_time_s=time.perf_counter() - started, extra=extra)
    path = report.write_summary(run_dir, summary)
    report.render(run_dir)
    if getattr(args, "command", None) == "run" and not args.no_export:
        out = run_dir / "export"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        _export(model, tokenizer, summary, summary["best_genome"], out, found["space"])
        _log(args)(f"exported: {out}")
    print(f"{args.engine}: sparsity {summary['sparsity']:.3f}, KL {summary['fitness']['kl']:.4f} "
          f"(uniform {summary['uniform']['kl']:.4f}) after {summary['evaluations']} evaluations -> {path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from sparsearch.supernet.store import SupernetStore

    started = time.perf_counter()
    _search_config(args), _calibration_config(args)
    store = SupernetStore.open(args.supernet)
    model, tokenizer = _load(args)
    store.check_model(_fingerprint(model))
    return _search_and_report(args, model, tokenizer, store, started)


def cmd_run(args: argparse.Namespace) -> int:
    from sparsearch.launch.pipeline import ensure_supernet

    started = time.perf_counter()
    _search_config(args), _supernet_config(args), _calibration_config(args)
    _check_files(args.calib_text)
    model, tokenizer = _load(args)
    out = Path(args.supernet) if args.supernet else Path(args.run_dir) / "supernet"
    store = ensure_supernet(model, tokenizer, out, _supernet_config(args), _calibration_config(args),
                            model_name=args.model, progress=not args.quiet, log=_log(args))
    _log(args)(_describe(store))
    return _search_and_report(args, model, tokenizer, store, started)


def _export(model, tokenizer, summary: dict, genome: list[int], out: Path, space, dtype: str = "auto") -> Path:
    import torch

    from sparsearch.launch.report import model_card
    from sparsearch.supernet.export import export

    if genome != summary["best_genome"]:
        summary = {k: v for k, v in summary.items() if k != "heldout"}  # measured for the best genome only
    info = {**summary, "sparsity_of_genome": space.sparsity(tuple(genome)),
            "fitness_of_genome": summary["fitness"]["kl"] if genome == summary["best_genome"]
            else next(p["fitness"] for p in summary["pareto"] if p["genome"] == genome)}
    params = sum(p.numel() for p in model.parameters())
    card = model_card(info, genome, space.per_layer(tuple(genome)), params)
    return export(model, tokenizer, out, card=card, dtype=None if dtype == "auto" else getattr(torch, dtype))


def cmd_export(args: argparse.Namespace) -> int:
    from sparsearch.launch.report import SUMMARY
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    path = Path(args.run_dir) / SUMMARY
    if not path.is_file():
        raise SparsearchError(f"no {SUMMARY} in {args.run_dir}: run a search first")
    summary = json.loads(path.read_text())
    if args.genome == "best":
        genome = summary["best_genome"]
    elif args.genome.startswith("pareto:") and args.genome[7:].isdigit():
        i = int(args.genome[7:])
        if not 0 <= i < len(summary.get("pareto") or []):
            raise SparsearchError(f"the run's Pareto front has {len(summary.get('pareto') or [])} points; no point {i}")
        genome = summary["pareto"][i]["genome"]
    else:
        raise SparsearchError(f"--genome must be best or pareto:I, got {args.genome!r}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SparsearchError(f"export folder {out} exists and is not empty")
    store = SupernetStore.open(summary["supernet"])
    args.model, args.seed = summary["model"], 0
    model, tokenizer = _load(args)
    stitcher = Stitcher(model, store)
    stitcher.apply(tuple(genome))
    print(f"exported: {_export(model, tokenizer, summary, genome, out, stitcher.space, args.dtype)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sparsearch.launch.report import SUMMARY, render

    if not (Path(args.run_dir) / SUMMARY).is_file():
        raise SparsearchError(f"no {SUMMARY} in {args.run_dir}")
    for p in render(args.run_dir):
        print(p)
    return 0


def _fingerprint(model) -> str:
    from sparsearch.supernet.fingerprint import model_fingerprint

    return model_fingerprint(model)


COMMANDS = {"supernet": cmd_supernet, "search": cmd_search, "run": cmd_run, "export": cmd_export, "eval": cmd_eval,
            "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except (SparsearchError, ValueError) as e:
        print(f"sparsearch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
