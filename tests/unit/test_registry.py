"""The registry is the one list of engines and starts: an engine added there alone (its file, here
the toy below, and one line) is a search a run builds, configures and resumes like the others."""

import argparse
from dataclasses import dataclass
from typing import Any

import pytest

from sparsearch.base.settings import require, setting
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.options import Options
from sparsearch.search import registry
from sparsearch.search.engine import Engine
from sparsearch.search.starts import StartContext
from tests.helpers.synthetic import SyntheticFitness, make_budget, synthetic_space


@dataclass(frozen=True)
class ToyConfig:
    toy_steps: int = setting(5, "toy: steps")
    toy_batch: int = setting(4, "toy: random genomes scored per step")

    def __post_init__(self) -> None:
        require(self.toy_steps >= 0, "toy_steps", self.toy_steps, ">= 0")


class ToyEngine(Engine):
    """Random search: every step scores a few random genomes repaired into the budget band on the
    final stage and keeps the best."""

    name = "toy"
    config: ToyConfig

    def initialize(self) -> None:
        self.genome = self.start_genome()
        self.score = self.fitness.evaluate([self.genome], self.final_stage)[0]
        self.steps = 0

    def step(self) -> dict[str, Any]:
        genomes = [self.budget.repair(tuple(self.rng.randrange(len(lv)) for lv in self.space.levels), self.rng)
                   for _ in range(self.config.toy_batch)]
        for genome, score in zip(genomes, self.fitness.evaluate(genomes, self.final_stage)):
            if score < self.score:
                self.genome, self.score = genome, score
        self.steps += 1
        return {"scored": len(genomes)}

    def done(self) -> bool:
        return self.steps >= self.config.toy_steps

    def best(self):
        return self.genome, self.score

    @classmethod
    def planned_evaluations(cls, config: ToyConfig, survivors, space) -> dict[int, int]:
        return {len(survivors) - 1: 1 + config.toy_steps * config.toy_batch}

    def get_state(self) -> dict[str, Any]:
        return {"genome": list(self.genome), "score": self.score, "steps": self.steps}

    def set_state(self, state: dict[str, Any]) -> None:
        self.genome, self.score, self.steps = tuple(state["genome"]), state["score"], state["steps"]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.ENGINES, "toy", registry.Entry(ToyEngine, ToyConfig))  # the one registry line


def _run(cfg: SearchConfig, run_dir, *, fail_after=None, resume=False):
    """What a run does with a search config, on the synthetic fitness: the starts from the
    registry, then the engine from the registry."""
    space = synthetic_space()
    budget = make_budget(space)
    ctx = StartContext(space, budget, cfg.target_sparsity, seed=cfg.seed)
    starts = {name: registry.STARTS[name].genome(ctx, cfg.start_config(name)) for name in cfg.start_names}
    fitness = SyntheticFitness(space, fail_after=fail_after)
    engine = registry.make_engine(cfg.engine, space, budget, fitness, cfg.engine_config, run_dir=str(run_dir),
                                  seed=cfg.seed, log=None, starts=starts, patience=cfg.patience)
    return engine, engine.run(resume=resume, settings={"target_sparsity": cfg.target_sparsity}), fitness


def test_a_registered_engine_is_configured_from_the_registry(toy):
    cfg = SearchConfig(engine="toy", init="best")
    assert cfg.engine_config == ToyConfig() and cfg.start_names == registry.BEST_STARTS
    assert SearchConfig(engine="toy", init="uniform").start_names == ()  # the engine's own uniform start
    options = Options(argparse.ArgumentParser(prog="test", exit_on_error=False))
    options.add_engine_settings({name: entry.config for name, entry in registry.ENGINES.items()},
                                options.parser.add_argument_group("engine"))
    assert options.known["toy_steps"].owners == ("toy",)
    o = options.resolve(options.parser.parse_args(["--toy-steps", "2"]), {})
    assert o.config(ToyConfig) == ToyConfig(toy_steps=2)


def test_a_registered_engine_searches_the_synthetic_fitness(toy, tmp_path):
    cfg = SearchConfig(engine="toy", engine_config=ToyConfig(toy_steps=8))  # from the knapsack allocation
    engine, result, fitness = _run(cfg, tmp_path / "run")
    uniform = engine.space.uniform(cfg.target_sparsity)
    assert engine.budget.feasible(result.best_genome) and result.start_scores.keys() == {"knapsack"}
    assert result.best_fitness <= result.start_scores["knapsack"]
    assert fitness.true(result.best_genome) < 0.8 * fitness.true(uniform)
    assert [r["step"] for r in engine.files.history()] == list(range(1, 9))
    assert result.evaluations == fitness.calls == len(engine.files.evaluations())


def test_a_registered_engine_resumes_where_it_was_killed(toy, tmp_path):
    cfg = SearchConfig(engine="toy", seed=3)  # killed half-way through the knapsack's probes
    _, reference, _ = _run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "run", fail_after=reference.evaluations // 2)
    _, resumed, fitness = _run(cfg, tmp_path / "run", resume=True)
    assert (resumed.best_genome, resumed.best_fitness, resumed.evaluations) == \
        (reference.best_genome, reference.best_fitness, reference.evaluations)
    assert fitness.calls == reference.evaluations - reference.evaluations // 2


def test_every_start_is_a_one_shot_engine_of_its_name():
    for name, start in registry.STARTS.items():
        entry = registry.ENGINES[name]
        assert entry.engine.one_shot and entry.engine.name == name and entry.config is start.config
    assert registry.INITS == (*registry.STARTS, registry.BEST_START)
    assert set(registry.BEST_STARTS) == {n for n, s in registry.STARTS.items() if not s.probes_fitness}
