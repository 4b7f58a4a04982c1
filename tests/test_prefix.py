"""Scoring from a base genome's hidden states (fitness.prefix) gives the full passes' scores exactly."""

import random

import pytest
import torch

from tests.helpers.tiny import ARCHS, tiny_model
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.prefix import choose_base, first_difference
from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.search.knapsack import probes
from sparsearch.supernet import SupernetConfig, build_supernet


def test_first_difference_and_the_base_choice_by_hand():
    assert first_difference((0, 0, 1), (0, 0, 0)) == 2
    assert first_difference((0, 0, 0), (0, 0, 0)) == 3
    # probes of a 4-unit space: each differs from dense at its own unit; the dense base saves
    # 0 + 1/4 + 2/4 + 3/4 of a pass per level, so 2 levels per unit save 3 passes (> 2: chosen)
    two_levels = [tuple(l if u == v else 0 for u in range(4)) for v in range(4) for l in (1, 2)]
    assert choose_base(two_levels) == (0, 0, 0, 0)
    # one level per unit saves 1.5 passes, not more than the base's own pass and the margin
    assert choose_base([tuple(1 if u == v else 0 for u in range(4)) for v in range(4)]) is None
    # genomes differing at the first unit share nothing
    assert choose_base([(1, 0, 0), (2, 0, 0), (3, 0, 0)]) is None
    # the base is the per-unit most common level (ties: the lower level)
    assert choose_base([(1, 1, 1, 1, 2), (1, 1, 1, 1, 3), (1, 1, 1, 1, 2), (1, 1, 1, 1, 3)]) == (1, 1, 1, 1, 2)


def _evaluator(arch, dtype, tmp_path, **kw):
    model = tiny_model(arch, layers=3).to(dtype)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 128, (6, 32), generator=g)
    fit = torch.randint(0, 128, (7, 32), generator=g)
    store = build_supernet(model, calib, str(tmp_path / "sn"), SupernetConfig(batch_size=3, mlp_alignment=8,
                           attn_ladder="0.25", mlp_ladder="0.25"), progress=False)
    # 7 rows in batches of 3: the last batch is smaller
    return Evaluator(model, store, fit, TokenSchedule.of([(4, 96), (1, 224)]), batch_size=3, **kw)


@pytest.mark.parametrize("arch,dtype", [(a, torch.float32) for a in ARCHS]
                         + [("llama", torch.bfloat16), ("qwen3", torch.bfloat16)])
def test_probes_from_the_dense_states_equal_full_passes(arch, dtype, tmp_path):
    ev = _evaluator(arch, dtype, tmp_path)
    genomes = probes(ev.space)
    assert choose_base(genomes) == ev.space.dense
    fast = ev.evaluate_many(genomes, 1)
    assert ev.stats["from_prefix"] == len(genomes)
    full = [ev.evaluate(g, 1) for g in genomes]
    assert fast == full
    assert len(set(fast)) > len(genomes) // 2  # the probes really differ


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_genomes_around_a_pruned_base_with_removed_blocks(arch, tmp_path):
    ev = _evaluator(arch, torch.float32, tmp_path, prefix_memory=0)  # every batch's states spilled to disk
    top = [len(lv) - 1 for lv in ev.space.levels]
    base = (1, top[1], 2, 1, top[4], 2)  # an MLP and an attention block removed
    rng = random.Random(0)
    genomes = []
    for u in range(2, len(base)):
        for _ in range(3):
            g = list(base)
            g[u] = rng.randrange(top[u] + 1)
            genomes.append(tuple(g))
    fast = [ev.evaluate(g, 1, sample=3, base=base) for g in genomes]
    assert ev._prefix[1].spilled == 3 and ev._prefix[1].bytes_in_memory == 0
    assert fast == [ev.evaluate(g, 1, sample=3) for g in genomes]


def test_training_stages_never_use_the_prefix(tmp_path):
    ev = _evaluator("llama", torch.float32, tmp_path)
    ev.schedule = TokenSchedule.of([(4, 96, 64), (1, 224, 64)])
    assert ev.base_for(probes(ev.space), 0) is None
