"""The Ray evaluator pool: same scores as in process, actor death survived, two nodes used,
cluster-launcher configs valid; evaluators placed from the cluster's resources, not the driver's
(a head with declared GPUs on this CPU machine), and refused or timed out in one line when the
cluster cannot hold them. Starts small local Ray instances (RAY_AUTH_MODE=disabled)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

ray = pytest.importorskip("ray")

from tests.helpers.tiny import tiny_model, tiny_tokenizer  # noqa: E402
from sparsearch.base.errors import SparsearchError  # noqa: E402
from sparsearch.fitness.pool import EvaluatorSpec, InProcessPool, RayPool  # noqa: E402
from sparsearch.search.budget import Budget, CostModel  # noqa: E402
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine  # noqa: E402
from sparsearch.supernet import SupernetConfig, build_supernet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ((2, 32, 0), (1, 64, 0))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, len(tok), (4, 16), generator=g)
    build_supernet(model, calib, str(root / "sn"), SupernetConfig(batch_size=2, mlp_alignment=8, store_dtype="float32"),
                   progress=False)
    save_file({"tokens": torch.randint(0, len(tok), (4, 16), generator=g)}, str(root / "fit.safetensors"))
    return EvaluatorSpec(model=str(root / "model"), supernet=str(root / "sn"), tokens=str(root / "fit.safetensors"),
                         schedule=SCHEDULE, threads=1, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _engine(space, fitness, run_dir):
    budget = Budget.from_sparsity(CostModel.params(space), 0.5, tolerance=0.05)
    return EvolutionEngine(space, budget, fitness, EvolutionConfig(generations=3, offspring=4), run_dir=str(run_dir),
                           seed=0, log=None)


def test_pool_scores_equal_in_process_and_survive_a_killed_actor(spec, local_ray, tmp_path):
    local = InProcessPool(spec)
    space = local.evaluator.space
    reference = _engine(space, local, tmp_path / "local").run()

    pool = RayPool(spec, workers=2, num_cpus=1)
    killed = []

    def on_result_kill(i, score):
        if len(killed) == 0 and len(pool.nodes) >= 3:
            victim = pool.actors[0]
            killed.append(victim)
            ray.kill(victim)

    original = pool.evaluate_many
    pool.evaluate_many = lambda genomes, stage, on_result=None, sample=0: original(
        genomes, stage, lambda i, s: (on_result and on_result(i, s), on_result_kill(i, s)), sample)
    try:
        result = _engine(space, pool, tmp_path / "ray").run()
    finally:
        pool.close()
    assert killed and pool.replaced >= 1
    assert result.evaluations == reference.evaluations
    assert result.best_genome == reference.best_genome
    assert result.best_fitness == pytest.approx(reference.best_fitness, rel=1e-5, abs=1e-7)


def test_an_actors_evaluator_trains_on_the_specs_training_tokens(spec, tmp_path):
    """What an actor builds from a spec with training stages (``build_evaluator``, here in process):
    it trains on the spec's training tokens with the spec's settings, as an evaluator given them
    directly does, and the trained score differs from the untrained one."""
    import dataclasses

    from safetensors.torch import load_file

    from sparsearch.fitness.config import TrainConfig
    from sparsearch.fitness.evaluator import Evaluator
    from sparsearch.fitness.schedule import TokenSchedule
    from sparsearch.supernet.models import load_model
    from sparsearch.supernet.store import SupernetStore

    train_tokens = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(1))
    save_file({"tokens": train_tokens}, str(tmp_path / "train.safetensors"))
    schedule = ((2, 32, 0), (1, 64, 128))
    trained_spec = dataclasses.replace(spec, schedule=schedule, train={"lr": 1e-2},
                                       train_tokens=str(tmp_path / "train.safetensors"))
    pool = InProcessPool(trained_spec)
    genome = pool.evaluator.space.uniform(0.5)
    model, _ = load_model(spec.model, dtype="float32")
    direct = Evaluator(model, SupernetStore.open(spec.supernet), load_file(spec.tokens)["tokens"],
                       TokenSchedule.of(schedule), train=TrainConfig(lr=1e-2), train_tokens=train_tokens)
    assert pool.evaluate_many([genome], 1) == [pytest.approx(direct.evaluate(genome, 1), rel=1e-6)]
    untrained = InProcessPool(spec).evaluate_many([genome], 1)[0]
    assert pool.evaluate_many([genome], 1)[0] != pytest.approx(untrained, rel=1e-4)


def test_an_actor_the_cluster_cannot_place_times_out_in_one_line(spec, local_ray):
    started = time.monotonic()
    with pytest.raises(SparsearchError, match=r"1 of 1 evaluator actors of 1 GPU and 1 CPU each were not placed "
                                              r"within 1 s \(0 of 0 GPUs free"):
        RayPool(spec, 1, num_gpus=1, num_cpus=1, timeout=1)
    assert time.monotonic() - started < 30


def test_an_actor_that_cannot_load_its_supernet_is_one_line(spec, local_ray, tmp_path):
    import dataclasses

    missing = dataclasses.replace(spec, supernet=str(tmp_path / "nowhere"))
    with pytest.raises(SparsearchError, match=r"^evaluator actor: no supernet at .*nowhere \(missing manifest.json\)$"):
        RayPool(missing, 1, num_cpus=1)


def test_an_actor_that_does_not_see_the_drivers_files_is_one_line_naming_node_and_path(spec, local_ray, tmp_path):
    """Each placed actor hashes the supernet manifest, the token files and the model folder's config
    it will read; the pool refuses one whose view differs from the driver's (``expected``: what the
    driver saw), before any model loads, naming the actor's host and the file."""
    import hashlib
    import socket

    from sparsearch.fitness.pool import shared_files

    seen = shared_files(spec)
    manifest, config = str(Path(spec.supernet) / "manifest.json"), str(Path(spec.model) / "config.json")
    assert set(seen) == {manifest, spec.tokens, config}
    assert seen[spec.tokens] == hashlib.sha256(Path(spec.tokens).read_bytes()).hexdigest()
    assert seen[config] == hashlib.sha256(Path(config).read_bytes()).hexdigest()
    changed = {**seen, spec.tokens: "0" * 64}  # the driver's file differs from what the node sees
    with pytest.raises(SparsearchError, match=rf"^evaluator on node {socket.gethostname()} \(\w+\) sees another "
                                              rf"file at {spec.tokens}: a model folder, the supernet and the run directory "
                                              "must be"):
        RayPool(spec, 1, num_cpus=1, expected=changed)
    elsewhere = str(tmp_path / "only-on-the-driver.safetensors")
    with pytest.raises(SparsearchError, match=rf"cannot read {elsewhere}: "):
        RayPool(spec, 1, num_cpus=1, expected={**seen, elsewhere: "0" * 64})
    with pytest.raises(SparsearchError, match=rf"sees another file at {config}: "):  # another model there
        RayPool(spec, 1, num_cpus=1, expected={**seen, config: "0" * 64})
    pool = RayPool(spec, 1, num_cpus=1)  # the same view: placed, and "files" is not in the summary's record
    try:
        assert "files" not in pool.placed[0] and pool.placed[0]["host"] == socket.gethostname()
    finally:
        pool.close()


def test_an_actor_that_dies_on_every_evaluation_stops_the_pool(spec, local_ray, monkeypatch):
    import sparsearch.fitness.pool as pool_module

    class Dying(pool_module._Actor):  # a local class: Ray ships it by value
        def load(self):
            return "cpu"

        def evaluate(self, *args):
            os._exit(1)

    monkeypatch.setattr(pool_module, "_Actor", Dying)
    pool = RayPool(spec, 1, num_cpus=1, retries=1)
    try:
        with pytest.raises(SparsearchError, match="evaluator actors died 2 times evaluating one genome"):
            pool.evaluate_many([(0,) * 4], 0)
        assert pool.replaced == 1
    finally:
        pool.close()


@pytest.mark.slow  # starts a second Ray node (about 3 minutes on 2 cores)
def test_two_node_cluster_runs_evaluations_on_both_nodes(spec, tmp_path):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                              "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        pool = RayPool(spec, workers=2, num_cpus=1)
        space = InProcessPool(spec).evaluator.space
        result = _engine(space, pool, tmp_path / "run").run()
        assert result.evaluations > 4
        assert len(set(pool.nodes)) == 2, "evaluations ran on one node only"
        pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("name", ["cluster.yaml", "local-cluster.yaml"])
def test_cluster_launcher_configs_are_valid(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "launch" / name).read_text())
    validate_config(prepare_config(config))
    mounts = config["file_mounts"]
    assert "." in mounts.values()  # the project travels to every node
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])


def test_the_venv_is_activated_before_debians_non_interactive_guard(tmp_path):
    """The setup line puts the activation just before Debian's non-interactive guard in ~/.bashrc (an
    old line after the guard goes), so a non-interactive shell that reads ~/.bashrc (`ssh host cmd`)
    gets the venv, and again last, so an interactive shell (`ray exec`, the setup commands) ends in
    it, even when the host's ~/.bashrc activates another environment first; twice is once. Ray starts from the venv, so its workers and
    Ray Jobs inherit it in any shell."""
    for name in ("cluster.yaml", "local-cluster.yaml"):
        config = yaml.safe_load((ROOT / "launch" / name).read_text())
        home = tmp_path / name
        for venv, mark in (("sparsearch-venv", "sparsearch"), ("other-venv", "other")):
            (home / venv / "bin").mkdir(parents=True)
            (home / venv / "bin" / "activate").write_text(f"export VENV={mark}\n")
        other = "source ~/other-venv/bin/activate\n"  # e.g. conda's base, activated by the host
        debian = 'case $- in\n    *i*) ;;\n      *) return;;\nesac\nHISTSIZE=1000\n'
        (home / ".bashrc").write_text(other + debian + "source ~/sparsearch-venv/bin/activate\n")  # the old line
        setup = next(c for c in config["setup_commands"] if ".bashrc" in c)
        env = {"HOME": str(home), "PATH": os.environ["PATH"]}
        for _ in range(2):
            subprocess.run(["bash", "-c", setup], env=env, check=True)
        line = "source ~/sparsearch-venv/bin/activate\n"
        assert (home / ".bashrc").read_text() == other + line + debian + line
        for flags in (["-c"], ["-i", "-c"]):  # non-interactive: stops at the guard; interactive: reads it all
            shell = subprocess.run(["bash", *flags, "source ~/.bashrc; echo ${VENV:-none}"], env=env,
                                   capture_output=True, text=True, check=True)
            assert shell.stdout.strip().splitlines()[-1] == "sparsearch", (flags, shell.stdout, shell.stderr)
        for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
            assert cmd.startswith(("source ~/sparsearch-venv/bin/activate && ray ", "~/sparsearch-venv/bin/ray ")), cmd


def test_the_cloud_yaml_mounts_the_shared_fs_once_and_keeps_the_hub_cache_and_token_there(tmp_path):
    """cluster.yaml's commands, run twice with stand-ins for sudo, mountpoint and mount: the file
    system named at the top is mounted at /mnt/shared once, and the venv's activation exports
    HF_HOME under it (and the token, when one is set) exactly once."""
    config = yaml.safe_load((ROOT / "launch" / "cluster.yaml").read_text())
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    (home / "sparsearch-venv" / "bin").mkdir(parents=True)
    (home / "sparsearch-venv" / "bin" / "activate").write_text("export VIRTUAL_ENV=x\n")
    bin_.mkdir()
    log = tmp_path / "calls"
    stand_ins = {"sudo": '"$@"', "mkdir": f'echo "mkdir $*" >> {log}', "chown": f'echo "chown $*" >> {log}',
                 "mount.nfs4": "true", "apt-get": f'echo "apt-get $*" >> {log}',
                 "mount": f'echo "mount $*" >> {log}; touch {tmp_path}/mounted',
                 "mountpoint": f'test -e {tmp_path}/mounted'}
    for name, body in stand_ins.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_}:{os.environ['PATH']}"}
    init = config["initialization_commands"]
    shared = [c for c in config["setup_commands"] if "/mnt/shared" in c]
    assert len(init) == 1 and len(shared) == 2
    for token in ("", "hf_secret"):
        subprocess.run(["bash", "-c", init[0].replace("'' >", f"'{token}' >")], env=env, check=True)
        for _ in range(2):
            for command in shared:
                subprocess.run(["bash", "-c", command], env=env, check=True)
        activate = (home / "sparsearch-venv" / "bin" / "activate").read_text()
        assert activate == "export VIRTUAL_ENV=x\nexport HF_HOME=/mnt/shared/hf\n" + (
            f"export HF_TOKEN={token}\n" if token else "")
    mounts = [line for line in log.read_text().splitlines() if line.startswith("mount ")]
    assert len(mounts) == 1 and mounts[0].endswith("fs-0123456789abcdef0.efs.us-west-2.amazonaws.com:/ /mnt/shared")
    assert "-t nfs4" in mounts[0] and "apt-get" not in log.read_text()


# -- a cluster with GPUs, a driver without -------------------------------------------------------
HOLDER = """
import sys, ray
ray.init(num_cpus=2, num_gpus=2, include_dashboard=True, dashboard_port=int(sys.argv[1]),
         object_store_memory=80 * 2**20, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gpu_cluster_info():
    """A Ray instance that declares 2 GPUs and 2 CPUs on this CPU machine (its own process: closing
    its stdin shuts it down, and nothing else's Ray): its ``address`` and its ``dashboard`` (what
    Ray's state API asks)."""
    port = _free_port()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray instance did not start"
        yield {"address": address, "dashboard": f"http://127.0.0.1:{port}"}
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()


@pytest.fixture(scope="module")
def gpu_cluster(gpu_cluster_info):
    """The address of :func:`gpu_cluster_info`'s Ray instance."""
    return gpu_cluster_info["address"]


def _build_tasks(dashboard: str, since: set | frozenset = frozenset(), settle: int = 0) -> list:
    """The supernet build tasks Ray's state API knows of, each attempt, but those whose ``(task_id,
    attempt_number)`` is in ``since`` (``settle``: as :func:`_tasks`)."""
    return _tasks(dashboard, "sparsearch-supernet-build", since, settle)


def _attempts(dashboard: str, name: str = "sparsearch-supernet-build") -> set:
    return {(t.task_id, t.attempt_number) for t in _tasks(dashboard, name)}


def _driver(*args, timeout=300, **environ) -> subprocess.CompletedProcess:
    """The command line as a driver with no GPU of its own sees it (``environ``: more variables)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", **environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_supernet(model_dir, tmp_path_factory):
    from sparsearch.launch.cli import main

    sn = tmp_path_factory.mktemp("gpu") / "sn"
    assert main(["supernet", "--model", str(model_dir / "model"), "--out", str(sn), "--calib-text",
                 str(model_dir / "text.txt"), "--calib-samples", "4", "--calib-seqlen", "32", "--mlp-alignment", "8",
                 "--quiet"]) == 0
    return sn


def _search(model_dir, sn, run_dir, *extra):
    return ["-m", "sparsearch.launch.cli", "search", "--model", model_dir / "model", "--supernet", sn,
            "--run-dir", run_dir, "--calib-text", model_dir / "text.txt", "--calib-samples", "4", "--calib-seqlen",
            "32", "--schedule", "1:64", "--quiet", *extra]


def test_placement_comes_from_the_clusters_gpus(gpu_cluster):
    """No --workers: one actor per GPU of the cluster, each holding one; GPU shares as many as the
    CPUs allow; --worker-gpus 0: CPU actors, one per node."""
    probe = (f"from sparsearch.launch.cluster import ClusterConfig, place\n"
             f"for kw in ({{}}, {{'worker_gpus': 0.5}}, {{'worker_gpus': 0.5, 'worker_cpus': 0.5}}, "
             f"{{'worker_gpus': 0}}):\n"
             f"    p = place(ClusterConfig(ray_address={gpu_cluster!r}, **kw), accelerators=0)\n"
             f"    print(p.actors, p.gpus, p.cpus)\n")
    r = _driver("-c", probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["2 1.0 1.0", "2 0.5 1.0", "4 0.5 0.5", "1 0 1.0"]


def test_a_driver_without_gpus_gives_each_evaluator_a_gpu_of_the_cluster(gpu_cluster, model_dir, tiny_supernet,
                                                                        tmp_path):
    run = tmp_path / "run"
    r = _driver(*_search(model_dir, tiny_supernet, run, "--ray-address", gpu_cluster, "--workers", "2",
                         "--engine", "uniform"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    workers, build = summary["cluster"]["workers"], summary["cluster"]["build"]
    assert summary["workers"] == 2 and len(workers) == 2
    assert [w["gpus"] for w in workers] == [1, 1] and [w["cpus"] for w in workers] == [1, 1]
    assert sorted(i for w in workers for i in w["gpu_ids"]) == ["0", "1"]  # a GPU each, not the same one
    assert {w["device"] for w in workers} == {"cpu"}  # no CUDA on this machine: torch stays on the CPU
    assert build["gpus"] == 0 and build["device"] == "cpu"  # the driver needed none
    assert summary["nodes"] and set(summary["nodes"]) <= {w["node"] for w in workers}

    started = time.monotonic()
    r = _driver(*_search(model_dir, tiny_supernet, tmp_path / "r16", "--ray-address", gpu_cluster, "--workers", "16"),
                timeout=60)
    assert time.monotonic() - started < 60
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("sparsearch: error: --workers 16: 16 evaluator actors of 1 GPU and 1 CPU each do not "
                               "fit: the cluster has 2 GPUs and 2 CPUs free"), r.stderr
    assert not (tmp_path / "r16").exists()  # refused before anything was written


def test_a_local_run_records_where_it_ran(model_dir, tiny_supernet, tmp_path, capsys):
    """In process, without Ray: one evaluator, this host, its devices."""
    import socket

    from sparsearch.launch.cli import main

    run = tmp_path / "run"
    assert main([str(a) for a in _search(model_dir, tiny_supernet, run, "--engine", "uniform")[2:]]) == 0
    summary = json.loads((run / "summary.json").read_text())
    cluster = summary["cluster"]
    assert summary["workers"] == 1 and len(cluster["workers"]) == 1
    worker = cluster["workers"][0]
    assert worker["host"] == socket.gethostname() and worker["gpus"] == 0 and worker["device"] == "cpu"
    assert worker["cpus"] >= 1 and cluster["build"]["device"] == "cpu"


# -- the heavy steps on a GPU node --------------------------------------------------------------
def _run(model_dir, run_dir, *extra, samples=4):
    return ["-m", "sparsearch.launch.cli", "run", "--model", model_dir / "model", "--run-dir", run_dir,
            "--calib-text", model_dir / "text.txt", "--calib-samples", str(samples), "--calib-seqlen", "32",
            "--mlp-alignment", "8", "--schedule", "1:64", "--no-export", "--quiet", *extra]


def _variants(supernet: Path) -> dict[str, list]:
    """Every unit's levels as the manifest records them (kept channels, file hashes)."""
    units = json.loads((supernet / "manifest.json").read_text())["units"]
    return {u: [(e["kept"], e.get("sha256")) for e in v["levels"]] for u, v in sorted(units.items())}


def test_a_driver_without_gpus_builds_the_supernet_in_a_ray_task_that_holds_a_gpu(gpu_cluster_info, model_dir,
                                                                                   tmp_path):
    """`run` from a driver with no GPU, on a cluster with GPUs: calibration sampling and the build run
    in one Ray task of 1 GPU (Ray's state API says so, and summary.json), the evaluators get the
    cluster's GPUs, and the driver never holds the weights: the held-out perplexities and the export
    come from another such task. Supernet, perplexities and export are those of the same run in
    process."""
    address, dashboard = gpu_cluster_info["address"], gpu_cluster_info["dashboard"]
    run = tmp_path / "run"
    before, finishing = _attempts(dashboard), _attempts(dashboard, "sparsearch-finish")
    whole = ("--engine", "evolution", "--generations", "1", "--offspring", "2", "--eval-text", model_dir / "text.txt",
             "--eval-seqlen", "32")
    r = _driver(*[a for a in _run(model_dir, run) if a != "--no-export"], "--ray-address", address, "--workers", "2",
                *whole)
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    cluster = summary["cluster"]
    build, workers, finish = cluster["build"], cluster["workers"], cluster["finish"]
    assert build["ray_task"] is True and build["gpus"] == 1 and len(build["gpu_ids"]) == 1
    assert build["device"] == "cpu"  # no CUDA on this machine: the task's torch stays on the CPU
    assert build["node"] in {w["node"] for w in workers} and [w["gpus"] for w in workers] == [1, 1]
    assert finish["ray_task"] is True and finish["gpus"] == 1 and cluster["driver"]["weights"] is False
    assert summary["timings"]["build"] > 0 and "sampling" in summary["timings"]
    tasks = _build_tasks(dashboard, before, settle=1)
    group = "_group_0_" + (tasks[0].placement_group_id or "?")  # a placement group's bundle 0 holds the task
    assert [(t.state, t.required_resources.get("GPU" + group), t.required_resources.get("CPU" + group))
            for t in tasks] == [("FINISHED", 1.0, 1.0)]
    assert tasks[0].node_id == build["node"]
    assert [t.state for t in _tasks(dashboard, "sparsearch-finish", finishing, settle=1)] == ["FINISHED"]

    local = tmp_path / "local"  # the same run in this process (one torch thread, as the tasks')
    r = _driver(*[a for a in _run(model_dir, local) if a != "--no-export"], *whole)
    assert r.returncode == 0, r.stderr
    here = json.loads((local / "summary.json").read_text())
    assert here["cluster"]["build"].get("ray_task") is None and here["cluster"]["driver"]["weights"] is True
    assert _variants(run / "supernet") == _variants(local / "supernet")
    assert summary["best_genome"] == here["best_genome"]
    assert summary["heldout"]["perplexity"] == pytest.approx(here["heldout"]["perplexity"], rel=1e-6)
    assert summary["heldout"]["uniform_perplexity"] == pytest.approx(here["heldout"]["uniform_perplexity"], rel=1e-6)
    exported = [(d / "export" / "model.safetensors").read_bytes() for d in (run, local)]
    assert exported[0] == exported[1]


def _ray_worker(title: bytes, skip: set[int]) -> int | None:
    """The pid of a process whose title is ``title`` (Ray names a worker after the task it runs)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in skip:
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0] == title:
                        return int(entry)
            except OSError:
                continue
    return None


def test_a_build_task_killed_mid_build_is_retried_and_resumes_from_the_store(gpu_cluster_info, model_dir,
                                                                            tmp_path):
    """SIGKILL on the build task's worker once the store holds a random number of its units: Ray runs
    the task again, the retry resumes from the store, and the finished supernet equals an
    uninterrupted build's, byte for byte."""
    import random
    import signal
    import threading

    address, dashboard = gpu_cluster_info["address"], gpu_cluster_info["dashboard"]
    calm = tmp_path / "calm"
    args = ("--ray-address", address, "--workers", "1", "--engine", "uniform")
    assert _driver(*_run(model_dir, calm, *args, samples=32)).returncode == 0
    units = len(_variants(calm / "supernet"))
    at = random.Random(os.getpid()).randint(1, units - 1)  # kill once the store holds this many units
    killed: dict[str, int] = {}
    manifest = tmp_path / "run" / "supernet" / "manifest.json"
    title = b"ray::sparsearch-supernet-build"

    def kill() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pid = _ray_worker(title, set())
            try:
                held = len(json.loads(manifest.read_text())["units"]) if pid and manifest.is_file() else 0
            except (OSError, ValueError):
                held = 0
            if pid and held >= at:
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, units=held)
                return
            time.sleep(0.005)

    before = _attempts(dashboard)
    killer = threading.Thread(target=kill)
    killer.start()
    r = _driver(*_run(model_dir, tmp_path / "run", *args, samples=32))
    killer.join()
    assert r.returncode == 0, r.stderr
    assert 1 <= killed.get("units", 0) < units, (killed, at, units)  # killed mid-build, not after it
    attempts = [(t.attempt_number, t.state) for t in _build_tasks(dashboard, before, settle=2)]
    assert attempts == [(0, "FAILED"), (1, "FINISHED")], attempts
    assert _variants(tmp_path / "run" / "supernet") == _variants(calm / "supernet")


HUB_ID = "sparsearch-test/tiny"
ON_A_NODE = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=1)
def resolve(spec):
    from sparsearch.base.errors import SparsearchError
    from sparsearch.supernet.models import hub_snapshot
    try:
        return str(hub_snapshot(spec))
    except SparsearchError as e:
        return "error: " + str(e)

print(ray.get(resolve.remote(sys.argv[2])))
"""


def test_a_hub_model_is_staged_once_by_the_driver_and_the_nodes_load_its_folder(gpu_cluster_info, model_dir,
                                                                                 tmp_path):
    """A hub id on a cluster: the driver resolves it once, in its Hugging Face cache (here offline,
    a cache that holds the snapshot), and the build task and both evaluators load that folder; the
    cluster's own processes, with another cache, could not resolve the id at all."""
    import shutil

    address = gpu_cluster_info["address"]
    repo = tmp_path / "hf" / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    shutil.copytree(model_dir / "model", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    hf = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    node = _driver("-c", ON_A_NODE, address, HUB_ID, **hf)  # what a node of the cluster makes of the id
    assert node.returncode == 0, node.stderr
    assert node.stdout.strip().startswith("error: no such model folder 'sparsearch-test/tiny'"), node.stdout

    run = tmp_path / "run"
    args = [a if a != model_dir / "model" else HUB_ID for a in _run(model_dir, run)]
    r = _driver(*[a for a in args if a != "--quiet"], "--ray-address", address, "--workers", "2", "--engine",
                "uniform", **hf)
    assert r.returncode == 0, r.stderr
    assert f"model: {HUB_ID} staged in {repo / 'snapshots' / ('0' * 40)}" in r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == HUB_ID and summary["cluster"]["build"]["ray_task"] is True
    assert json.loads((run / "supernet" / "manifest.json").read_text())["model"]["name"] == HUB_ID
    assert [w["gpus"] for w in summary["cluster"]["workers"]] == [1, 1]


def _tasks(dashboard: str, name: str, since: set | frozenset = frozenset(), settle: int = 0) -> list:
    """The tasks named ``name`` that Ray's state API knows of, each attempt but those in ``since``;
    with ``settle``, waiting (up to 30 s) until that many have ended: task events reach the state
    API a moment after the task, so right after a run they may not be there yet."""
    from ray.util.state import list_tasks

    deadline = time.monotonic() + 30
    while True:
        tasks = [t for t in list_tasks(address=dashboard, filters=[("name", "=", name)], detail=True,
                                       raise_on_missing_output=False) if (t.task_id, t.attempt_number) not in since]
        ended = [t for t in tasks if t.state in ("FINISHED", "FAILED")]
        if len(ended) >= settle or time.monotonic() > deadline:
            return sorted(tasks, key=lambda t: t.attempt_number)
        time.sleep(0.5)


def test_run_heals_its_export_in_a_ray_task_that_holds_a_gpu(gpu_cluster_info, model_dir, tmp_path):
    """`run --heal-tokens` from a driver with no GPU: healing runs in a Ray task of 1 GPU (the state
    API says so) and writes the healed export that healing in process writes, byte for byte."""
    address, dashboard = gpu_cluster_info["address"], gpu_cluster_info["dashboard"]
    heal = ("--engine", "uniform", "--heal-tokens", "256")
    before = _attempts(dashboard, "sparsearch-heal")
    r = _driver(*[a for a in _run(model_dir, tmp_path / "run") if a != "--no-export"], "--ray-address", address,
                "--workers", "1", *heal)
    assert r.returncode == 0, r.stderr
    tasks = _tasks(dashboard, "sparsearch-heal", before, settle=1)
    group = "GPU_group_0_" + (tasks[0].placement_group_id if tasks else "?")
    assert [(t.state, t.required_resources.get(group)) for t in tasks] == [("FINISHED", 1.0)]

    r = _driver(*[a for a in _run(model_dir, tmp_path / "local") if a != "--no-export"], *heal)  # in process
    assert r.returncode == 0, r.stderr
    for run in ("run", "local"):
        assert json.loads((tmp_path / run / "heal.json").read_text())["export"] == str(tmp_path / run / "export-healed")
    healed = [(tmp_path / run / "export-healed" / "model.safetensors").read_bytes() for run in ("run", "local")]
    assert healed[0] == healed[1]


def test_a_heavy_task_the_cluster_cannot_place_is_one_line_within_its_timeout(gpu_cluster):
    """A task of more GPUs than the cluster has is refused after its placement timeout, naming the
    free GPUs and CPUs, and leaves the cluster's resources free."""
    probe = (f"import time, ray\n"
             f"from sparsearch.base.errors import SparsearchError\n"
             f"from sparsearch.launch.cluster import connect\n"
             f"from sparsearch.launch.remote import NodeTask, call_on_node\n"
             f"connect({gpu_cluster!r})\n"
             f"started = time.monotonic()\n"
             f"try:\n"
             f"    call_on_node(NodeTask(gpus=3, cpus=1, timeout=2), abs, (-1,), what='the test task', name='t', "
             f"retries=0)\n"
             f"except SparsearchError as e:\n"
             f"    print(e)\n"
             f"print(round(time.monotonic() - started), ray.available_resources().get('GPU'))\n")
    r = _driver("-c", probe)
    assert r.returncode == 0, r.stderr
    message, timing = r.stdout.strip().splitlines()[-2:]
    assert message == ("the test task (3 GPUs and 1 CPU) could not be placed within 2 s: the cluster has 2 GPUs and "
                       "2 CPUs free (of 2 and 2); free a GPU node, or wait longer with --worker-timeout"), message
    seconds, gpus = timing.split()
    assert 2 <= int(seconds) <= 20 and float(gpus) == 2.0


def test_a_driver_that_needs_the_weights_loads_them_and_still_exports_on_a_gpu(gpu_cluster_info, model_dir,
                                                                             tmp_path):
    """OWL's start reads activations in the driver, so it loads the weights; the build and the export
    still run in Ray tasks of 1 GPU."""
    address = gpu_cluster_info["address"]
    run = tmp_path / "run"
    r = _driver(*[a for a in _run(model_dir, run) if a != "--no-export"], "--ray-address", address, "--workers", "1",
                "--init", "owl", "--generations", "1", "--offspring", "2")
    assert r.returncode == 0, r.stderr
    cluster = json.loads((run / "summary.json").read_text())["cluster"]
    assert cluster["driver"]["weights"] is True
    assert cluster["build"]["ray_task"] is True and cluster["finish"]["ray_task"] is True
    assert cluster["finish"]["gpus"] == 1 and (run / "export" / "model.safetensors").is_file()
