"""The Ray evaluator pool: same scores as in process, actor death survived, two nodes used,
cluster-launcher configs valid. Starts small local Ray instances (RAY_AUTH_MODE=disabled)."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

ray = pytest.importorskip("ray")

from tests.helpers.tiny import tiny_model, tiny_tokenizer  # noqa: E402
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
