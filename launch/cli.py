"""The ``sparsearch`` command line. Every subcommand accepts ``--config PRESET.yaml`` (keys are
flag names; flags given on the command line override them) and exits with status 2 and one
``sparsearch: error: ...`` line on bad input.

Flags that set a config field are derived from the config dataclasses
(:mod:`sparsearch.launch.options`). :func:`main` turns a command's flags and preset into one
:class:`~sparsearch.launch.runconfig.RunConfig` (every typed config, validated) before the command
runs, and the command passes it to the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsearch.base import rundir
from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.data import CalibrationConfig
from sparsearch.launch.cluster import ClusterConfig, place
from sparsearch.launch.config import SearchConfig
from sparsearch.launch import inputs
from sparsearch.launch.heldout import HeldoutConfig
from sparsearch.launch.options import Options, Resolved, read_preset
from sparsearch.launch.runconfig import DTYPES, RunConfig, Source, run_config
from sparsearch.base.errors import SparsearchError, SparsearchWarning
from sparsearch.search.registry import ENGINES
from sparsearch.supernet.config import SupernetConfig

DEFAULT_MODEL = "smollm2-135m"


class _Parser(argparse.ArgumentParser):
    """Usage errors become one ``sparsearch: error:`` line (``--help`` still prints the help)."""

    def error(self, message: str):  # type: ignore[override]
        raise SparsearchError(message)


# -- option groups shared by subcommands ------------------------------------------------------
def _model_options(o: Options, *, required: bool = False) -> None:
    o.add("--model", default=None if required else DEFAULT_MODEL, required=required,
          help=f"alias ({DEFAULT_MODEL}), model folder, .gguf file or hub id")
    o.add("--dtype", default="auto", choices=DTYPES, help="weights dtype (auto: as stored)")
    o.add("--device", default="auto", help="torch device (auto: the machine's accelerator if any, else cpu)")
    o.add("--trust-remote-code", action="store_true", default=False,
          help="run Python code shipped in the model folder or hub repo (auto_map); never implied")


def _calibration_options(o: Options, *, only: list[str] | None = None) -> None:
    g = o.parser.add_argument_group("calibration")
    src = g.add_mutually_exclusive_group()
    o.add("--calib-text", metavar="FILE", help="calibration text file", group=src)
    o.add("--calib-dataset", metavar="SPEC", help="datasets spec NAME[:CONFIG[:SPLIT[:FIELD]]]", group=src)
    o.add("--calib-self", action="store_true", default=False,
          help="sample calibration text from the dense model (the default source)", group=src)
    o.add_settings(CalibrationConfig, group=g, only=only)


def _search_options(o: Options) -> None:
    o.add_settings(SearchConfig, group=o.parser.add_argument_group("search"))
    o.add_engine_settings({name: entry.config for name, entry in ENGINES.items()},
                          o.parser.add_argument_group("engine settings ([engines that use them])"))
    o.add_settings(FitnessConfig, group=o.parser.add_argument_group("fitness"))
    o.add_settings(TrainConfig, group=o.parser.add_argument_group(
        "training-aware fitness (stages survivors:tokens:train_tokens train each candidate first)"))
    o.add_settings(HeldoutConfig, group=o.parser.add_argument_group("held-out perplexity"))
    o.add_settings(ClusterConfig, group=o.parser.add_argument_group("evaluation on Ray"))
    o.add("--resume", action="store_true", default=False, help="continue the run in --run-dir from its checkpoint")


def _common_options(o: Options) -> None:
    o.add("--seed", type=int, default=0, help="seed of calibration sampling and search")
    o.add("--quiet", action="store_true", default=False, help="no progress bars or log lines")


Runner = Callable[[Resolved, RunConfig], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help, the function adding its options, its runner (given the resolved
    options and the run config built from them), and where its calibration source comes from
    when no flag names one (default: self-generated)."""

    help: str
    options: Callable[[Options], None]
    run: Runner
    calibration: Callable[[Resolved], Source] | None = None


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, options: Callable[[Options], None], *,
            calibration: Callable[[Resolved], Source] | None = None):
    """Register a subcommand (see :class:`Command`); decorates its runner."""

    def register(run: Runner) -> Runner:
        COMMANDS[name] = Command(help, options, run, calibration)
        return run

    return register


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Options]]:
    parser = _Parser(prog="sparsearch", description="Search per-layer structured sparsity of decoder LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    options = {}
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--config", metavar="PRESET.yaml", help="YAML file of flag values (flags given here win)")
        options[name] = Options(p)
        cmd.options(options[name])
    return parser, options


def parse_args(argv: Sequence[str] | None) -> tuple[str, Resolved]:
    parser, options = build_parser()
    ns = parser.parse_args(argv)
    opts = options[ns.command]
    preset = read_preset(ns.config) if getattr(ns, "config", None) else {}
    resolved = opts.resolve(ns, preset, ns.config or "preset")
    for dest, opt in opts.known.items():
        if opt.required and resolved.values[dest] is None:
            raise SparsearchError(f"the following arguments are required: {opt.flag}")
    _absolute_paths(resolved)
    inputs.check_values(resolved.values)
    return ns.command, resolved


PATH_OPTIONS = ("supernet", "run_dir", "out", "calib_text", "eval_text", "data")


def _absolute_paths(o: Resolved) -> None:
    """Paths become absolute once, here: summaries and manifests name files that another working
    directory (``export``, ``report``, a Ray actor) can open. A model spec is a path only if it
    exists (else an alias or a hub id)."""
    for dest in (*PATH_OPTIONS, "model"):
        if isinstance(o.values.get(dest), str) and not o.values[dest].strip():
            raise SparsearchError(f"--{dest.replace('_', '-')} must not be empty")
    for dest in PATH_OPTIONS:
        if o.values.get(dest):
            o.values[dest] = str(Path(o.values[dest]).expanduser().absolute())
    model = o.values.get("model")
    if model and Path(model).expanduser().exists():
        o.values["model"] = str(Path(model).expanduser().absolute())


def _log(o: Resolved) -> Callable[[str], None]:
    return (lambda msg: None) if o.values.get("quiet") else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _device(name: str):
    import torch

    if name == "auto":
        return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SparsearchError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cpu":
        return device
    here = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if here is None or here.type != device.type:
        raise SparsearchError(f"--device {name}: this machine has no {device.type} device"
                              + (f" (it has {here.type})" if here is not None else " (only the cpu)"))
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise SparsearchError(f"--device {name}: this machine has {torch.accelerator.device_count()} {device.type} devices")
    return device


def _load(run: RunConfig, model: str | None = None):
    from sparsearch.supernet.models import load_model

    if not run.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    return load_model(model or run.load_spec, dtype=run.dtype, device=_device(run.device),
                      trust_remote_code=run.trust_remote_code)


def _staged(run: RunConfig) -> RunConfig:
    """A run that joins a Ray cluster with a hub model downloads its files once, here, into the
    Hugging Face cache (``HF_HOME``, on storage every node sees: launch/cluster.yaml), and every
    process of the run (the build task, the evaluators, this one) loads that folder: the nodes need
    neither the network nor the token."""
    from sparsearch.supernet.models import hub_snapshot

    if run.cluster is None or run.cluster.address is None or run.model is None:
        return run
    folder = hub_snapshot(run.model)
    if folder is None:
        return run
    run.log(f"model: {run.model} staged in {folder} for the cluster's nodes")
    return dataclasses.replace(run, model_files=str(folder))


def _check_files(*paths: str | None) -> None:
    """Fail on a missing input file before any model is loaded."""
    for p in paths:
        if p and not Path(p).is_file():
            raise SparsearchError(f"text file not found: {p}")


def _text_file(calib: CalibrationConfig) -> str | None:
    """The calibration's text file, if it reads one."""
    return calib.location if calib.source == "text" else None


def _describe(store) -> str:
    units = store.manifest["units"]
    levels = {len(u["levels"]) for u in units.values()}
    secs = store.manifest.get("build_seconds")
    return (f"supernet: {store.path} ({len(units)} units, {'/'.join(map(str, sorted(levels)))} levels each, "
            f"{store.size_bytes / 2**20:.1f} MiB on disk" + (f", built in {secs:.0f} s)" if secs else ")"))


def _claim_supernet(out: Path | str, flag: str) -> None:
    """Lock the supernet a command may build (a finished one is only read, by any number of runs)."""
    from sparsearch.supernet.store import MANIFEST, SupernetStore

    if not SupernetStore.is_complete(out):
        rundir.claim(out, "supernet", flag, mark=MANIFEST, write_mark=False)


def _lock_existing(run_dir: str) -> None:
    """Lock a run directory a command writes into (where no lock file can be made, none is taken)."""
    rundir.lock(run_dir, "run directory", create=False, read_only_ok=True)


# -- commands -----------------------------------------------------------------------------------
def _supernet_command_options(o: Options) -> None:
    _model_options(o)
    o.add("--out", required=True, metavar="DIR", help="supernet directory")
    _calibration_options(o)
    o.add_settings(SupernetConfig, group=o.parser.add_argument_group("supernet"))
    _common_options(o)


@command("supernet", "build (or resume) a supernet of per-unit pruning variants", _supernet_command_options)
def cmd_supernet(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.pipeline import ensure_supernet, require_fits

    _check_files(_text_file(run.calibration))
    _claim_supernet(o.out, "--out")
    model, tokenizer = _load(run)
    require_fits(model, seqlens={"calib_seqlen": run.calibration.seqlen}, supernet=run.supernet)
    store = ensure_supernet(model, tokenizer, Path(o.out), run, log=run.log)
    print(_describe(store))
    return 0


def _eval_options(o: Options) -> None:
    _model_options(o, required=True)
    o.add("--data", required=True, metavar="FILE", help="held-out text file")
    o.add("--seqlen", type=int, default=512, help="window length")
    o.add("--max-tokens", type=int, metavar="N", help="score only the first N tokens")
    o.add_settings(FitnessConfig, only=["batch_size"])
    o.add("--supernet", metavar="DIR", help="stitch from this supernet before evaluating")
    o.add("--target-sparsity", type=float, help="with --supernet: the uniform allocation at this sparsity")
    _common_options(o)


@command("eval", "held-out perplexity of a model (or of a uniform allocation); prints JSON", _eval_options)
def cmd_eval(o: Resolved, run: RunConfig) -> int:
    from sparsearch.fitness.data import read_text
    from sparsearch.launch.heldout import text_windows
    from sparsearch.fitness.metrics import perplexity
    from sparsearch.launch.pipeline import require_fits
    from sparsearch.supernet.store import SupernetStore

    if (o.supernet is None) != (o.target_sparsity is None):
        raise SparsearchError("--supernet and --target-sparsity go together")
    if o.seqlen < 2:
        raise SparsearchError(f"--seqlen must be >= 2 (a window scores its next tokens), got {o.seqlen}")
    if o.max_tokens is not None and o.max_tokens < o.seqlen:
        raise SparsearchError(f"--max-tokens must be at least --seqlen ({o.seqlen}), got {o.max_tokens}")
    read_text(o.data)
    _device(run.device)
    store = SupernetStore.open(o.supernet) if o.supernet else None
    if store is not None:
        store.check_files()  # refuse a missing, unfinished or damaged supernet before loading
    model, tokenizer = _load(run)
    require_fits(model, seqlens={"--seqlen": o.seqlen})
    result: dict[str, Any] = {"model": run.model, "data": o.data, "seqlen": o.seqlen}
    if store is not None:
        from sparsearch.supernet.stitch import Stitcher

        stitcher = Stitcher(model, store)
        genome = stitcher.space.uniform(o.target_sparsity)
        stitcher.apply(genome)
        result.update(genome=list(genome), sparsity=stitcher.space.sparsity(genome))
    windows = text_windows(o.data, tokenizer, o.seqlen, o.max_tokens)
    result.update(perplexity(model, windows, batch_size=run.fitness.batch_size, progress=run.progress))
    result["params"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(result))
    return 0


def _search_and_report(run: RunConfig, model, tokenizer, store, started: float, *, export: bool, clock,
                       built_on: dict[str, Any] | None = None, finish_on=None) -> int:
    """Search ``store``, write the run's summary and plots, then (``export``) its export and, with
    ``run.heal``, a healed one. ``built_on``: where ``store`` was built, when not in this process;
    ``finish_on``: the GPU node (:class:`~sparsearch.launch.remote.NodeTask`) that measures the
    held-out perplexity and exports, for a driver without a GPU (whose ``model`` may hold no
    weights)."""
    from sparsearch.launch import pipeline, remote, report
    from sparsearch.launch.heldout import heldout_windows

    windows = heldout_windows(run.heldout, tokenizer)  # a bad held-out text fails before the search
    outcome = pipeline.search(model, tokenizer, store, run, log=run.log, clock=clock, built_on=built_on,
                              stitch=finish_on is None)
    summary = _summary(run, outcome, windows if finish_on is None else None, started, clock)
    if finish_on is not None and (export or windows is not None):
        with clock("export"):
            finished = remote.finish_on_node(finish_on, run, summary, export=export, log=run.log)
        summary = {**summary, **({"heldout": finished["heldout"]} if "heldout" in finished else {})}
        summary["cluster"]["finish"] = finished["where"]
        summary["timings"], summary["wall_time_s"] = clock.rounded(), round(time.perf_counter() - started, 3)
        if export:
            run.log(f"exported: {run.run_dir / 'export'}")
    path = report.write_summary(run.run_dir, summary)
    report.render(run.run_dir)
    if export and finish_on is None:
        _export_run(run, model, tokenizer, outcome, summary, started, clock)
    if export and run.heal is not None:
        _heal_export(run, model, tokenizer, outcome, finish_on)
    print(f"{run.search.engine}: sparsity {summary['sparsity']:.3f}, KL {summary['fitness']['kl']:.4f} "
          f"(uniform {summary['uniform']['kl']:.4f}) after {summary['evaluations']} evaluations -> {path}")
    return 0


def _summary(run: RunConfig, outcome, windows, started: float, clock) -> dict[str, Any]:
    """The run's ``summary.json``: the outcome, where it ran, and with held-out ``windows`` the
    perplexities of the best genome, the uniform one and every start."""
    from sparsearch.launch import report
    from sparsearch.launch.heldout import heldout_perplexity

    where = outcome.cluster  # each evaluator's node, GPUs and CPUs, and the supernet builder's
    extra: dict[str, Any] = {"workers": len(where["workers"]), "nodes": outcome.nodes, "cluster": where,
                             "calibration": run.calibration.describe(), "fitness_source": run.scoring.describe()}
    if windows is not None:
        run.log(f"held-out perplexity on {windows.shape[0]} windows of {run.heldout.text}")
        extra["heldout"] = heldout_perplexity(run.heldout, windows, outcome.stitcher, outcome.result.best_genome,
                                              outcome.uniform_genome, batch_size=run.fitness.batch_size,
                                              starts={n: tuple(b["genome"]) for n, b in outcome.baselines.items()})
    summary = report.build_summary(outcome, model=run.model, engine=run.search.engine,
                                   target_sparsity=run.search.target_sparsity,
                                   wall_time_s=time.perf_counter() - started, extra=extra)
    summary["timings"] = clock.rounded()
    return summary


def _export_run(run: RunConfig, model, tokenizer, outcome, summary: dict[str, Any], started: float, clock) -> None:
    """The best genome exported to ``R/export`` (replacing an earlier one); the summary gets the time."""
    import shutil

    from sparsearch.launch import report

    out = run.run_dir / "export"
    if out.exists():
        shutil.rmtree(out)
    with clock("export"):
        report.export_genome(model, tokenizer, summary, summary["best_genome"], out, outcome.space)
    run.log(f"exported: {out}")
    summary["timings"] = clock.rounded()
    summary["wall_time_s"] = round(time.perf_counter() - started, 3)
    report.write_summary(run.run_dir, summary)


def _heal_export(run: RunConfig, model, tokenizer, outcome, node=None) -> None:
    """``run --heal-tokens N``: the export healed into ``R/export-healed`` (replacing an earlier one);
    on ``node`` (a :class:`~sparsearch.launch.remote.NodeTask`) when the driver has no GPU."""
    import shutil

    from sparsearch.launch import remote
    from sparsearch.launch.heal import HEALED_EXPORT, heal

    healed = run.run_dir / HEALED_EXPORT
    if healed.exists():
        shutil.rmtree(healed)
    if node is not None:
        summary = remote.heal_on_node(node, run, healed, log=run.log)["summary"]
    else:
        outcome.stitcher.apply(outcome.space.dense)  # the teacher: heal stitches its own student
        summary = heal(run.run_dir, healed, run.heal, run.calibration, load=lambda spec: (model, tokenizer),
                       dtype=run.dtype, seed=run.seed, resume=run.resume, heldout=run.heldout,
                       eval_batch_size=run.fitness.batch_size, progress=run.progress, log=run.log).summary
    run.log(f"healed export: {summary['export']}")


def _search_command_options(o: Options) -> None:
    _model_options(o)
    o.add("--supernet", required=True, metavar="DIR", help="a finished supernet of --model")
    o.add("--run-dir", required=True, metavar="R", help="run directory")
    _search_options(o)
    _calibration_options(o)
    _common_options(o)


@command("search", "search the per-unit levels of a supernet under a budget", _search_command_options)
def cmd_search(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.phases import PhaseClock
    from sparsearch.launch.pipeline import require_fits
    from sparsearch.supernet.fingerprint import model_fingerprint
    from sparsearch.supernet.store import SupernetStore

    started = time.perf_counter()
    _check_files(run.heldout.text)
    _device(run.device)
    inputs.probe_storage(o.values)
    place(run.cluster)  # the cluster can hold the evaluators, before the run directory is written
    run = _staged(run)
    rundir.claim(o.run_dir, "run directory", "--run-dir")
    store = SupernetStore.open(o.supernet)
    store.check_files()
    clock = PhaseClock()
    with clock("load"):
        model, tokenizer = _load(run)
    store.check_model(model_fingerprint(model))
    require_fits(model, seqlens=run.seqlens)
    return _search_and_report(run, model, tokenizer, store, started, export=False, clock=clock)


def _run_command_options(o: Options) -> None:
    _model_options(o)
    o.add("--run-dir", default="runs/default", metavar="R", help="run directory")
    o.add("--supernet", metavar="DIR", help="supernet directory (default: R/supernet)")
    o.add("--no-export", action="store_true", default=False, help="do not export the best model to R/export")
    o.add("--heal-tokens", type=int, default=0, metavar="N",
          help="then heal the export by distillation on N tokens of the calibration source, in sequences of "
               "--calib-seqlen (otherwise sparsearch heal's defaults), into R/export-healed")
    _search_options(o)
    _calibration_options(o)
    o.add_settings(SupernetConfig, group=o.parser.add_argument_group("supernet"))
    _common_options(o)


@command("run", "build or reuse the supernet, search, and write the run directory", _run_command_options)
def cmd_run(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.phases import PhaseClock
    from sparsearch.launch import remote
    from sparsearch.launch.pipeline import ensure_supernet, require_fits
    from sparsearch.supernet.adapters import DecoderAdapter
    from sparsearch.supernet.models import load_shell
    from sparsearch.supernet.store import SupernetStore

    started = time.perf_counter()
    _check_files(_text_file(run.calibration), run.heldout.text)
    inputs.probe_storage(o.values)
    place(run.cluster)  # the cluster can hold the evaluators, before the run directory is written
    run = _staged(run)
    rundir.claim(o.run_dir, "run directory", "--run-dir")
    out = Path(o.supernet) if o.supernet else run.run_dir / "supernet"
    _claim_supernet(out, "--supernet")
    clock = PhaseClock()
    node = remote.accelerator_node(run.cluster)  # a driver without a GPU builds on a GPU node of its cluster
    shell = None
    with clock("load"):
        if node is not None and remote.weightless_driver(run):
            shell = load_shell(run.load_spec, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
        model, tokenizer = shell if shell is not None else _load(run)
    require_fits(model, seqlens=run.seqlens, supernet=run.supernet)
    built_on = None
    if node is not None and (shell is not None or not SupernetStore.is_complete(out)):
        # the task builds the supernet, or checks a finished one against the weights this driver lacks
        built = remote.build_on_node(node, run, out, layers=DecoderAdapter(model).shape.num_layers, log=run.log,
                                     progress=run.progress)
        clock.add(built["seconds"])
        built_on = built["where"]
    store = SupernetStore.open(out) if shell is not None else ensure_supernet(model, tokenizer, out, run, log=run.log,
                                                                              clock=clock)
    store.check_files()
    run.log(_describe(store))
    return _search_and_report(run, model, tokenizer, store, started, export=not o.no_export, clock=clock,
                              built_on=built_on, finish_on=node)


def _plan_options(o: Options) -> None:
    _model_options(o)
    _calibration_options(o, only=["samples", "seqlen", "sample_batch"])  # the source: whether it is sampled
    o.add_settings(SupernetConfig, group=o.parser.add_argument_group("supernet"))
    _search_options(o)
    _common_options(o)


@command("plan", "what a run will cost, from the model's config alone: supernet disk, calibration sampling "
         "memory (--calib-self, the default), build memory and forward passes, evaluation and search tokens; "
         "prints JSON", _plan_options)
def cmd_plan(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.plan import ModelShape, plan
    from sparsearch.launch.tokens import TokenPlan
    from sparsearch.supernet.models import load_config

    calib, fitness = run.calibration, run.fitness
    shape = ModelShape.from_config(load_config(run.model, trust_remote_code=run.trust_remote_code), run.dtype)
    result = plan(shape, run.supernet, samples=calib.samples, seqlen=calib.seqlen, search=run.search,
                  schedule=fitness.token_schedule, validation_rows=TokenPlan.of(calib, fitness).validation,
                  device=_device(run.device).type, sample_batch=calib.sample_batch if calib.source == "self" else None)
    result["model"] = {"name": run.model, **result["model"]}
    print(json.dumps(result, indent=1))
    return 0


def _export_options(o: Options) -> None:
    o.add("--run-dir", required=True, metavar="R", help="run directory")
    o.add("--out", required=True, metavar="DIR", help="export folder (new or empty)")
    o.add("--genome", default="best", help="best | pareto:I (the I-th point of the run's Pareto front)")
    o.add("--dtype", default="auto", choices=DTYPES, help="weights dtype of the export (auto: the model's)")
    o.add("--device", default="auto", help="torch device")
    o.add("--trust-remote-code", action="store_true", default=False,
          help="run Python code shipped with the run's model (auto_map); never implied")
    o.add("--quiet", action="store_true", default=False, help="no progress bars")


@command("export", "write the best (or a Pareto) genome of a run as a smaller HF model", _export_options)
def cmd_export(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.report import export_genome, read_summary
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    summary = read_summary(o.run_dir)
    pareto = re.fullmatch(r"pareto:([0-9]{1,9})", o.genome)
    if o.genome == "best":
        genome = summary["best_genome"]
    elif pareto:
        i = int(pareto.group(1))
        if not 0 <= i < len(summary.get("pareto") or []):
            raise SparsearchError(f"the run's Pareto front has {len(summary.get('pareto') or [])} points; no point {i}")
        genome = summary["pareto"][i]["genome"]
    else:
        raise SparsearchError(f"--genome must be best or pareto:I, got {o.genome!r}")
    out = Path(o.out)
    if out.exists() and any(out.iterdir()):
        raise SparsearchError(f"export folder {out} exists and is not empty")
    _lock_existing(o.run_dir)
    store = SupernetStore.open(summary["supernet"])
    store.check_files()
    model, tokenizer = _load(run, model=summary["model"])
    stitcher = Stitcher(model, store)
    stitcher.apply(tuple(genome))
    print(f"exported: {export_genome(model, tokenizer, summary, genome, out, stitcher.space, run.dtype)}")
    return 0


def _heal_options(o: Options) -> None:
    from sparsearch.launch.heal import HealConfig

    o.add("--run-dir", required=True, metavar="R", help="run directory (its best genome is healed)")
    o.add("--out", metavar="DIR", help="healed export folder, new or empty (default: R/export-healed)")
    o.add("--dtype", default="auto", choices=DTYPES, help="weights dtype of the models (auto: as stored)")
    o.add("--device", default="auto", help="torch device (auto: the machine's accelerator if any, else cpu)")
    o.add("--trust-remote-code", action="store_true", default=False,
          help="run Python code shipped with the run's model (auto_map); never implied")
    o.add_settings(HealConfig, group=o.parser.add_argument_group("healing"))
    _calibration_options(o, only=["sample_batch"])
    o.add_settings(HeldoutConfig, group=o.parser.add_argument_group("held-out perplexity before and after"))
    o.add_settings(FitnessConfig, only=["batch_size"])
    o.add("--resume", action="store_true", default=False, help="continue the healing run in R/heal from its checkpoint")
    _common_options(o)


def _run_calibration(o: Resolved) -> Source:
    """heal's calibration source when no flag names one: the run's own."""
    from sparsearch.launch.report import read_summary

    run_calib = read_summary(o.run_dir).get("calibration") or {}
    if not isinstance(run_calib, dict):
        raise SparsearchError(f"run summary {Path(o.run_dir) / 'summary.json'}: calibration is not an object")
    return run_calib.get("source", "self"), run_calib.get("location")


@command("heal", "recover a run's pruned model by distillation from the dense model; writes a healed export",
         _heal_options, calibration=_run_calibration)
def cmd_heal(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.heal import HEALED_EXPORT, heal

    _check_files(_text_file(run.calibration), run.heldout.text)
    _device(run.device)
    out = Path(o.out) if o.out else Path(o.run_dir) / HEALED_EXPORT
    _lock_existing(o.run_dir)
    result = heal(o.run_dir, out, run.heal, run.calibration, load=lambda spec: _load(run, model=spec),
                  dtype=run.dtype, seed=run.seed, resume=run.resume, heldout=run.heldout,
                  eval_batch_size=run.fitness.batch_size, progress=run.progress, log=run.log)
    s = result.summary
    print(json.dumps({k: v for k, v in s.items() if k != "settings"}
                     | {"loss": {k: v for k, v in s["loss"].items() if k != "history"}}))
    return 0


def _report_options(o: Options) -> None:
    o.add("--run-dir", required=True, metavar="R", help="run directory")


@command("report", "render the plots of a run directory again", _report_options)
def cmd_report(o: Resolved, run: RunConfig) -> int:
    from sparsearch.launch.report import read_summary, render

    read_summary(o.run_dir)
    _lock_existing(o.run_dir)
    for p in render(o.run_dir):
        print(p)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """The project's warnings are one ``sparsearch: warning:`` line; others print as Python's."""
    if issubclass(category, SparsearchWarning):
        print(f"sparsearch: warning: {message}", file=sys.stderr, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        name, options = parse_args(argv)
        cmd = COMMANDS[name]
        run = run_config(options, calibration=cmd.calibration, log=_log(options))  # every config, once
        return cmd.run(options, run)
    except SparsearchError as e:
        print(f"sparsearch: error: {inputs.error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsearch: interrupted", file=sys.stderr)
        return 130
    finally:
        rundir.release_all()


if __name__ == "__main__":
    raise SystemExit(main())
