"""Run files: a torn line of an append-only log hides nothing after it, and a run resumed
under other settings is refused naming the setting (real kills: tests/test_resume.py)."""

import pytest

from sparsearch.base.errors import SparsearchError
from sparsearch.search.budget import Budget, CostModel
from sparsearch.search.evolution import EvolutionConfig, EvolutionEngine
from sparsearch.search.runfiles import EVALUATIONS, RunFiles
from tests.helpers.synthetic import SyntheticFitness, synthetic_space


def test_a_torn_line_hides_nothing_after_it(tmp_path):
    files = RunFiles(tmp_path)
    for i in range(5):
        files.append_evaluation((i, 0), 0, float(i))
    path = tmp_path / EVALUATIONS
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + lines[2][:10] + b"\n" + b"".join(lines[3:]) + lines[0][:7])  # torn twice
    assert [r["genome"] for r in RunFiles(tmp_path).evaluations()] == [[0, 0], [1, 0], [3, 0], [4, 0]]
    files = RunFiles(tmp_path)
    files.append_evaluation((9, 9), 0, 9.0)  # after a torn last line: a line of its own
    assert [r["genome"] for r in RunFiles(tmp_path).evaluations()][-1] == [9, 9]
    assert files.evaluation_count() == 5


@pytest.mark.parametrize("changed", ["target_sparsity", "schedule"])
def test_resume_under_other_settings_is_refused_naming_the_setting(changed, tmp_path):
    space = synthetic_space()
    settings = {"target_sparsity": 0.5, "schedule": [[4, 64], [1, 128]]}

    def engine():
        return EvolutionEngine(space, Budget.from_sparsity(CostModel.params(space), 0.5, 0.02), SyntheticFitness(space),
                               EvolutionConfig(generations=2, offspring=3), run_dir=str(tmp_path), log=None)

    engine().run(settings=settings)
    other = dict(settings, **{changed: 0.25 if changed == "target_sparsity" else [[2, 64], [1, 256]]})
    with pytest.raises(SparsearchError, match=f"cannot resume: {changed} was"):
        engine().run(resume=True, settings=other)
    assert engine().run(resume=True, settings=settings).evaluations > 0  # the original settings resume
