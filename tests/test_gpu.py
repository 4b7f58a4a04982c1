"""The same build, stitch and score on a CUDA device as on the CPU (skipped without CUDA)."""

import copy

import pytest
import torch

from tests.helpers.tiny import tiny_model
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.schedule import TokenSchedule
from sparsearch.search.space import Unit
from sparsearch.supernet import SupernetConfig, build_supernet

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_build_stitch_and_score_on_cuda_equal_the_cpu(arch, tmp_path):
    g = torch.Generator().manual_seed(0)
    calib, fit = torch.randint(0, 128, (6, 32), generator=g), torch.randint(0, 128, (8, 32), generator=g)
    cfg = SupernetConfig(batch_size=3, mlp_alignment=8, store_dtype="float32")
    schedule = TokenSchedule.of([(2, 64), (1, 256)])
    cpu = tiny_model(arch, layers=3)
    gpu = copy.deepcopy(cpu).to("cuda")
    stores = {name: build_supernet(m, calib, str(tmp_path / name), cfg, progress=False)
              for name, m in (("cpu", cpu), ("cuda", gpu))}
    assert stores["cpu"].space().levels == stores["cuda"].space().levels
    for unit in stores["cpu"].space().units:
        for level in range(9):
            a, b = stores["cpu"].read(unit, level), stores["cuda"].read(unit, level)
            assert (a is None) == (b is None)
            for k in a or {}:
                torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-3)
    scores = {}
    for name, m in (("cpu", cpu), ("cuda", gpu)):
        ev = Evaluator(m, stores["cpu"], fit, schedule, topk=32)
        genome = ev.space.uniform(0.5)
        scores[name] = ev.evaluate(genome, 1)
        assert next(m.parameters()).device.type == name
    assert scores["cuda"] == pytest.approx(scores["cpu"], rel=1e-3)


def test_bf16_on_cuda_scores_close_to_float32(tmp_path):
    g = torch.Generator().manual_seed(0)
    calib, fit = torch.randint(0, 128, (6, 32), generator=g), torch.randint(0, 128, (8, 32), generator=g)
    model = tiny_model("llama", layers=3).to("cuda")
    store = build_supernet(model, calib, str(tmp_path / "sn"), SupernetConfig(batch_size=3, mlp_alignment=8),
                           progress=False)
    schedule = TokenSchedule.of([(1, 256)])
    f32 = Evaluator(copy.deepcopy(model), store, fit, schedule, topk=32)
    bf16 = Evaluator(copy.deepcopy(model).to(torch.bfloat16), store, fit, schedule, topk=32)
    genome = f32.space.uniform(0.5)
    assert bf16.evaluate(genome, 0) == pytest.approx(f32.evaluate(genome, 0), rel=5e-2)
    assert store.read(Unit(0, "mlp"), 4)["down_proj.weight"].dtype == torch.bfloat16
