"""A run's heavy steps on a GPU node of its Ray cluster, when the driver has no accelerator.

``ray submit`` runs the driver on the head node, which is usually a CPU machine. A run that joins
a cluster (``--ray-address``) with GPUs and has no accelerator of its own sends the calibration
sampling and the supernet build to one Ray task that holds a GPU (and ``--worker-cpus`` CPUs) of
the cluster. The task runs the very function a local run runs
(:func:`~sparsearch.launch.pipeline.ensure_supernet`) on a model it loads itself, on its node's
accelerator, and writes the store where the driver asked, on storage every node sees. Ray retries
a task whose worker dies; the retry resumes the build from the units already in the store. While
it runs, the driver shows a progress bar over the units the store holds. ``run --heal-tokens``
heals the export the same way, in a task that runs :func:`~sparsearch.launch.heal.heal`.

After the search, the steps that read the weights (held-out perplexity, the export) run in one more
task on a GPU node. Where the run allows it (:func:`weightless_driver`), the driver holds the model
without its weights (on the meta device) all along, so its memory does not grow with the model.

Call order::

    node = accelerator_node(run.cluster)            # None: in this process
    built = build_on_node(node, run, out, units=n)  # {"seconds": {phase: s}, "where": {...}}
    ...                                             # the search, in the driver and its evaluators
    finished = finish_on_node(node, run, summary, export=True)  # held-out perplexity, export
    healed = heal_on_node(node, run, out)           # {"summary": heal.json's, "where": {...}}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sparsearch.base.errors import SparsearchError
from sparsearch.launch.cluster import ClusterConfig, amount, connect

RETRIES = 2  # times Ray reruns a build task whose worker died (each rerun resumes from the store)
POLL_S = 2.0  # how often the driver reads the store's progress


@dataclass(frozen=True)
class NodeTask:
    """One Ray task of ``gpus`` GPUs and ``cpus`` CPUs, to be placed within ``timeout`` seconds."""

    gpus: float
    cpus: float
    timeout: float


def accelerator_node(cluster: ClusterConfig | None, accelerators: int | None = None) -> NodeTask | None:
    """Where a heavy step of a run with ``cluster`` goes: ``None`` (in this process) unless the run
    joins a Ray cluster that has GPUs and this process has no accelerator (``accelerators``: this
    process's count, default torch's), else a task of one GPU and ``worker_cpus`` CPUs
    (``--worker-gpus 0`` keeps the heavy steps in this process too)."""
    if cluster is None or cluster.address is None or cluster.worker_gpus == 0:
        return None
    if accelerators is None:
        import torch

        accelerators = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    if accelerators:
        return None
    import ray

    connect(cluster.address)
    if ray.cluster_resources().get("GPU", 0) < 1:
        return None
    return NodeTask(gpus=1.0, cpus=max(1.0, cluster.worker_cpus), timeout=cluster.worker_timeout)


def _node_device(cpus: float):
    """In a Ray task of ``cpus`` CPUs: as many torch threads, and the torch device of the GPU Ray gave
    it (the node's CPU where torch sees no accelerator)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def _build_task(run, out: str, cpus: float) -> dict[str, Any]:
    """The Ray task: load the model (``run.load_spec``) on this node's accelerator (else its CPU) and
    build or resume the supernet at ``out`` exactly as a local run does (a finished one is checked
    against the model's weights and settings)."""
    from sparsearch.launch.phases import PhaseClock
    from sparsearch.launch.pipeline import ensure_supernet
    from sparsearch.supernet.models import load_model

    device = _node_device(cpus)
    clock = PhaseClock()
    with clock("load"):
        model, tokenizer = load_model(run.load_spec, dtype=run.dtype, device=device,
                                      trust_remote_code=run.trust_remote_code)
    ensure_supernet(model, tokenizer, Path(out), run, log=run.log, clock=clock)
    return {"seconds": clock.seconds, "where": _where(device, cpus)}


def _free(ray) -> str:
    free, total = ray.available_resources(), ray.cluster_resources()
    return (f"{free.get('GPU', 0):g} GPUs and {free.get('CPU', 0):g} CPUs free (of {total.get('GPU', 0):g} and "
            f"{total.get('CPU', 0):g})")


def build_on_node(node: NodeTask, run, out: Path, *, layers: int, log: Callable[[str], None] = lambda _: None,
                  progress: bool = True) -> dict[str, Any]:
    """Sample the calibration and build (or resume) the supernet of ``run``'s model of ``layers``
    decoder layers at ``out`` in one Ray task of ``node``'s resources, retried (and resumed from the
    store) when its worker dies, with a progress bar over the units the store holds. Returns the
    task's phase times and where it ran (``device_entry`` fields, the GPU ids and ``ray_task``)."""
    from sparsearch.search.space import UNIT_KINDS

    log(f"supernet: sampling and building on the cluster (a Ray task of {amount(node.gpus, 'GPU')} and {amount(node.cpus, 'CPU')}) "
        f"into {out}")
    return call_on_node(node, _build_task, (run, str(out), node.cpus), what="the supernet build task",
                        name="sparsearch-supernet-build", retries=RETRIES, total=layers * len(UNIT_KINDS), unit="unit",
                        done=lambda: _units_done(out), progress=progress)


def _heal_task(run, out: str, cpus: float) -> dict[str, Any]:
    """The Ray task: heal the run's best genome into ``out`` exactly as a local run does, on the dense
    model loaded on this node's accelerator (else its CPU)."""
    from sparsearch.launch.heal import heal
    from sparsearch.supernet.models import load_model

    device = _node_device(cpus)

    def load(spec: str):
        return load_model(run.load_spec if spec == run.model else spec, dtype=run.dtype, device=device,
                          trust_remote_code=run.trust_remote_code)

    result = heal(run.run_dir, Path(out), run.heal, run.calibration, load=load, dtype=run.dtype, seed=run.seed,
                  resume=run.resume, heldout=run.heldout, eval_batch_size=run.fitness.batch_size, progress=False,
                  log=run.log)
    return {"summary": result.summary, "where": _where(device, cpus)}


def heal_on_node(node: NodeTask, run, out: Path, *, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """``run --heal-tokens``'s healing of the run's export into ``out``, in one Ray task of ``node``'s
    resources (not retried: a killed healing resumes with ``sparsearch heal --resume``). Returns
    the healing's summary (``heal.json``) and where it ran."""
    log(f"healing on the cluster (a Ray task of {amount(node.gpus, 'GPU')} and {amount(node.cpus, 'CPU')}) into {out}")
    return call_on_node(node, _heal_task, (run, str(out), node.cpus), what="the healing task", name="sparsearch-heal",
                        retries=0)


def weightless_driver(run) -> bool:
    """Whether ``run``'s driver can hold the model without weights (:func:`~sparsearch.supernet.models.load_shell`)
    while its heavy steps run on a GPU node: its fitness, validation and training tokens come from a
    text (not sampled from the model), no start reads activations, and its engine builds no supernets
    of its own (Týr's rounds)."""
    from sparsearch.search.registry import ENGINES, STARTS

    search = run.search
    return (run.scoring.source != "self" and ENGINES[search.engine].extras is None
            and not any(STARTS[n].activations for n in search.start_names))


def _finish_task(run, summary: dict[str, Any], export: bool, cpus: float) -> dict[str, Any]:
    """The Ray task: the run's model stitched to its best genome on this node, its held-out
    perplexities (with ``run.heldout.text``) and, with ``export``, ``R/export`` with the model card
    of ``summary`` and those perplexities, as a driver that holds the weights writes them."""
    import shutil

    from sparsearch.launch import report
    from sparsearch.launch.heldout import heldout_perplexity, heldout_windows
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    device = _node_device(cpus)
    model, tokenizer = load_model(run.load_spec, dtype=run.dtype, device=device, trust_remote_code=run.trust_remote_code)
    store = SupernetStore.open(summary["supernet"])
    stitcher = Stitcher(model, store)
    best = tuple(summary["best_genome"])
    out: dict[str, Any] = {"where": _where(device, cpus)}
    windows = heldout_windows(run.heldout, tokenizer)
    if windows is not None:
        starts = {n: tuple(b["genome"]) for n, b in summary["baselines"].items()}
        out["heldout"] = heldout_perplexity(run.heldout, windows, stitcher, best, tuple(summary["uniform"]["genome"]),
                                            batch_size=run.fitness.batch_size, starts=starts)
        summary = {**summary, "heldout": out["heldout"]}
    if export:
        stitcher.apply(best)
        folder = run.run_dir / "export"
        if folder.exists():
            shutil.rmtree(folder)
        report.export_genome(model, tokenizer, summary, summary["best_genome"], folder, store.space())
    return out


def finish_on_node(node: NodeTask, run, summary: dict[str, Any], *, export: bool,
                   log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The steps of a run that need the weights after its search, for a driver without a GPU (which
    may hold no weights): the held-out perplexities and the export (:func:`_finish_task`), in one
    Ray task of ``node``'s resources, retried when its worker dies (both steps start over).
    Returns ``{"heldout": ...}`` (with a held-out text) and where it ran."""
    log(f"finishing on the cluster (a Ray task of {amount(node.gpus, 'GPU')} and {amount(node.cpus, 'CPU')}): "
        + ", ".join(x for x in ("held-out perplexity" if run.heldout.text else "", "export" if export else "") if x))
    return call_on_node(node, _finish_task, (run, summary, export, node.cpus), what="the finishing task",
                        name="sparsearch-finish", retries=RETRIES)


def _where(device, cpus: float) -> dict[str, Any]:
    """Where this Ray task runs: ``device_entry``'s fields, the GPU ids Ray gave it, ``ray_task``."""
    import ray

    from sparsearch.launch.cluster import device_entry

    held = ray.get_runtime_context().get_assigned_resources()
    return device_entry(device, cpus=int(held.get("CPU", cpus))) | {
        "gpus": int(held.get("GPU", 0)), "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "ray_task": True}


def call_on_node(node: NodeTask, fn: Callable[..., Any], args: tuple, *, what: str, name: str, retries: int,
                 total: int = 0, unit: str = "", done: Callable[[], int] | None = None,
                 progress: bool = True) -> Any:
    """``fn(*args)`` as one Ray task named ``name`` of ``node``'s GPUs and CPUs, placed through a
    placement group within ``node.timeout`` (else one line naming the cluster's free resources),
    rerun by Ray up to ``retries`` times when its worker dies; with ``done``, a progress bar of
    ``total`` ``unit``s that polls it. Its error, or its own :class:`SparsearchError`, is one line
    (``what``: the task, in it). The cluster's resources are free again when it returns."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from tqdm import tqdm

    from sparsearch.fitness.pool import ray_error_line

    before = ray.available_resources()
    group = placement_group([{"GPU": node.gpus, "CPU": node.cpus}])
    try:
        if not group.wait(node.timeout):
            raise SparsearchError(f"{what} ({amount(node.gpus, 'GPU')} and {amount(node.cpus, 'CPU')}) could not be placed within "
                                  f"{node.timeout:g} s: the cluster has {_free(ray)}; free a GPU node, or wait "
                                  "longer with --worker-timeout")
        task = ray.remote(fn).options(
            num_gpus=node.gpus, num_cpus=node.cpus, max_retries=retries, name=name,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0))
        ref = task.remote(*args)
        if done is not None:
            with tqdm(total=total, desc=f"{name.removeprefix('sparsearch-')} (Ray task)", unit=unit,
                      disable=not progress) as bar:
                while not ray.wait([ref], timeout=POLL_S)[0]:
                    bar.update(max(0, done() - bar.n))
                bar.update(max(0, total - bar.n))
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            if isinstance(getattr(e, "cause", None), SparsearchError):  # the run's own one-line error
                raise SparsearchError(str(e.cause)) from None
            raise SparsearchError(f"{what} failed: {ray_error_line(e)}") from None
    finally:
        remove_placement_group(group)
        _returned(ray, before)


def _returned(ray, before: dict[str, float], timeout: float = 30.0) -> None:
    """Wait until the cluster has again the GPUs and CPUs it had free before the build task (Ray
    frees a removed placement group asynchronously; the evaluators are placed next)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0) >= before.get(k, 0) - 1e-9 for k in ("GPU", "CPU")):
            return
        time.sleep(0.1)


def _units_done(out: Path) -> int:
    """How many units the unfinished supernet at ``out`` holds (0 before it starts, or after)."""
    from sparsearch.supernet.store import SupernetStore

    try:
        partial = SupernetStore.partial(out)
    except SparsearchError:  # read while it is being replaced: next time
        return 0
    if partial is None:
        return 0
    return len(partial.manifest["units"])
