import pytest

from sparsearch.base.errors import SparsearchError
from sparsearch.search.space import Ladder, Level, SearchSpace, Unit


def test_ladder_uniform_and_parse():
    assert Ladder.uniform(0.25).sparsities == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(Ladder.uniform(0.125)) == 9
    assert Ladder.parse("0,0.5,1").sparsities == (0.0, 0.5, 1.0)
    assert Ladder.parse("0.5") == Ladder.uniform(0.5)


@pytest.mark.parametrize("bad", [(0.0,), (0.1, 1.0), (0.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.0, 0.7, 0.3, 1.0)])
def test_ladder_rejects_bad_levels(bad):
    with pytest.raises(ValueError):
        Ladder(bad)


def test_ladder_rejects_uneven_step():
    with pytest.raises(ValueError):
        Ladder.uniform(0.3)


def _space():
    attn = (Level(0.0, 100, {"heads": 4}), Level(0.5, 50, {"heads": 2}), Level(1.0, 0, {"heads": 0}))
    mlp = (Level(0.0, 300), Level(0.25, 225), Level(0.5, 150), Level(0.75, 75), Level(1.0, 0))
    units = (Unit(0, "attn"), Unit(0, "mlp"), Unit(1, "attn"), Unit(1, "mlp"))
    return SearchSpace(units, (attn, mlp, attn, mlp))


def test_costs_are_exact_sums():
    space = _space()
    assert space.dense_params == 800
    assert space.params((1, 2, 0, 4)) == 50 + 150 + 100 + 0
    assert space.sparsity((2, 4, 2, 4)) == 1.0
    assert space.sparsity(space.dense) == 0.0


def test_uniform_genome_hits_target_on_the_ladder():
    space = _space()
    g = space.uniform(0.5)
    assert g == (1, 2, 1, 2)
    assert space.sparsity(g) == pytest.approx(0.5)
    # 0.6 of 100 -> 40: level 1 (50) is closest for attention; 0.4 * 300 = 120 -> 150 (level 2)
    assert space.uniform(0.6) == (1, 2, 1, 2)


def test_invalid_genomes_are_clear_errors():
    space = _space()
    with pytest.raises(SparsearchError, match="3 levels but the space has 4 units"):
        space.params((0, 0, 0))
    with pytest.raises(SparsearchError, match="outside its ladder"):
        space.params((0, 5, 0, 0))
    with pytest.raises(SparsearchError):
        space.uniform(1.5)


def test_per_layer_and_manifest_roundtrip():
    space = _space()
    manifest = {"units": {}}
    for unit, lv in zip(space.units, space.levels):
        manifest["units"][unit.name] = {
            "levels": [{"sparsity": l.sparsity, "params": l.params, "kept": dict(l.kept)} for l in lv]
        }
    again = SearchSpace.from_manifest(manifest)
    assert again.units == space.units and again.params((1, 1, 1, 1)) == space.params((1, 1, 1, 1))
    rows = space.per_layer((1, 4, 0, 0))
    assert rows[0]["attn"]["heads"] == 2 and rows[0]["mlp"]["params"] == 0 and rows[1]["attn"]["level"] == 0
