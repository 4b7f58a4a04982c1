import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.tiny import tiny_model
from sparsearch.fitness.evaluator import Evaluator
from sparsearch.fitness.metrics import kl_per_token
from sparsearch.fitness.schedule import PRESETS, Stage, TokenSchedule
from sparsearch.fitness.teacher import TeacherCache
from sparsearch.fitness.training import TrainConfig, train_copy
from sparsearch.supernet import SupernetConfig, build_supernet


def test_schedule_presets_and_parse():
    assert [s.survivors for s in PRESETS["darwinlm"].stages] == [8, 4, 2, 1]
    assert [s.tokens for s in PRESETS["tyr"].stages] == [2048, 16384, 131072]
    assert PRESETS["darwinlm-train"].stages[-1].train_tokens == 200_000
    assert TokenSchedule.parse("4:64,2:128:1000").stages == (Stage(4, 64), Stage(2, 128, 1000))
    assert TokenSchedule.parse("tyr") is PRESETS["tyr"]


@pytest.mark.parametrize("bad", ["4:128,2:128", "4:256,2:128", "2:64,4:128", "4:64:100,2:128:50", "", "a:b"])
def test_schedule_that_does_not_grow_is_rejected(bad):
    with pytest.raises(ValueError):
        TokenSchedule.parse(bad)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = tiny_model("llama", layers=2)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 128, (6, 32), generator=g)
    fit = torch.randint(0, 128, (8, 32), generator=g)
    store = build_supernet(model, calib, str(tmp_path_factory.mktemp("fit") / "sn"),
                           SupernetConfig(batch_size=3, mlp_alignment=8, store_dtype="float32"), progress=False)
    return model, store, fit


def test_topk_kl_is_a_lower_bound_and_exact_at_full_vocab(setup):
    model, _, fit = setup
    student = copy.deepcopy(model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
        s_logits = student(input_ids=fit[:4]).logits
        t_logits = model(input_ids=fit[:4]).logits
    full = kl_per_token(t_logits, s_logits)
    exact = TeacherCache.compute(model, fit[:4], k=128).kl(slice(0, 4), s_logits)
    torch.testing.assert_close(exact, full, rtol=1e-4, atol=1e-5)
    log_p, log_q = torch.log_softmax(t_logits, -1), torch.log_softmax(s_logits, -1)
    prev = None
    for k in (4, 16, 64, 120):
        approx = TeacherCache.compute(model, fit[:4], k=k).kl(slice(0, 4), s_logits)
        assert (approx >= -1e-6).all() and (approx <= full + 1e-5).all()
        gap = full - approx
        # the documented bound: gap <= p_rest * max over the rest bucket of log(p~/q~)
        rest = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, t_logits.topk(k, -1).indices, False)
        p_rest = (log_p.exp() * rest).sum(-1)
        q_rest = (log_q.exp() * rest).sum(-1)
        ratio = torch.where(rest, log_p - log_q, torch.full_like(log_p, -torch.inf)).amax(-1)
        bound = p_rest * (ratio - (p_rest / q_rest).log())
        assert (gap <= bound + 1e-5).all()
        if prev is not None:
            assert gap.mean() <= prev + 1e-6  # more cached logits never make the estimate worse
        prev = gap.mean()


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0, 2.0])
def test_topk_kl_of_sharp_students_is_the_exact_coarse_kl(tau):
    """V = 32k, k = 64: a student at temperature tau of the teacher. The cached KL equals the KL of
    the distributions coarsened to the teacher's top 64 plus the rest (computed in float64 from the
    full distributions), and lies between 0 and the full KL (a sharp student's rest mass is far
    below float32's resolution of 1 - sum(top))."""
    g = torch.Generator().manual_seed(0)
    V, k = 32_000, 64
    teacher = torch.randn(2, 16, V, generator=g) * 2.5
    teacher[..., :8] += 9.0  # a peaked teacher, as trained LMs are
    student = teacher / tau + 0.3 * torch.randn(2, 16, V, generator=g)
    cache = TeacherCache.from_logits(torch.zeros(2, 16, dtype=torch.long), teacher, k)
    approx = cache.kl(slice(0, 2), student)
    log_p, log_q = torch.log_softmax(teacher.double(), -1), torch.log_softmax(student.double(), -1)
    top = torch.zeros_like(log_p, dtype=torch.bool).scatter(-1, cache.top_index, True)
    p_top = log_p.exp()
    p_rest = torch.logsumexp(log_p.masked_fill(top, -torch.inf), -1)
    q_rest = torch.logsumexp(log_q.masked_fill(top, -torch.inf), -1)
    coarse = (torch.where(top, p_top * (log_p - log_q), 0.0)).sum(-1) + p_rest.exp() * (p_rest - q_rest)
    full = (p_top * (log_p - log_q)).sum(-1)
    torch.testing.assert_close(approx.double(), coarse, rtol=1e-4, atol=1e-4)
    assert (approx >= -1e-6).all() and (approx.double() <= full + 1e-4).all()


def test_teacher_cache_roundtrip(setup, tmp_path):
    model, _, fit = setup
    c = TeacherCache.compute(model, fit[:2], k=8)
    save_file(c.tensors(), str(tmp_path / "t.safetensors"))
    d = TeacherCache.from_tensors(load_file(str(tmp_path / "t.safetensors")))
    for name, t in c.tensors().items():
        assert torch.equal(t, getattr(d, name)), name


def test_evaluator_scores_dense_as_zero_and_sparser_as_worse(setup):
    model, store, fit = setup
    ev = Evaluator(copy.deepcopy(model), store, fit, TokenSchedule.of([(4, 64), (2, 128), (1, 256)]), topk=128)
    space = ev.space
    assert [ev.rows(i) for i in range(3)] == [2, 4, 8]
    assert abs(ev.evaluate(space.dense, 0)) < 1e-5
    k25, k75 = ev.evaluate(space.uniform(0.25), 2), ev.evaluate(space.uniform(0.75), 2)
    assert 0 < k25 < k75
    assert ev.stats["evaluations"] == 3


def test_evaluator_needs_enough_tokens(setup):
    model, store, fit = setup
    with pytest.raises(ValueError, match="needs 4096 fitness tokens"):
        Evaluator(copy.deepcopy(model), store, fit, TokenSchedule.of([(1, 4096)]))


def test_training_aware_scoring_leaves_dense_and_supernet_untouched(setup):
    model, store, fit = setup
    work = copy.deepcopy(model)
    dense_state = {k: v.clone() for k, v in work.state_dict().items()}
    sched = TokenSchedule.of([(2, 64, 0), (1, 128, 2048)])
    ev = Evaluator(work, store, fit, sched, train=TrainConfig(lr=1e-3), train_tokens=fit, topk=128)
    g = ev.space.uniform(0.5)
    ev.stitcher.apply(g)
    untrained = ev.score(work, ev.rows(1))
    trained = ev.evaluate(g, 1)
    assert trained != pytest.approx(untrained, rel=1e-6)
    assert ev.evaluate(g, 1) == pytest.approx(trained, rel=1e-6)  # seeded: same training, same score
    ev.stitcher.apply(ev.space.dense)
    for k, v in work.state_dict().items():
        assert torch.equal(v, dense_state[k]), k
    store.verify()  # every supernet file still matches its checksum


def test_train_copy_lowers_training_loss():
    model = tiny_model("qwen3", layers=1)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))

    def loss(m):
        with torch.no_grad():
            out = m(input_ids=ids, labels=ids)
        return out.loss.item()

    before = loss(model)
    trained = train_copy(model, ids, 16 * 4 * 20, TrainConfig(lr=1e-3, batch_size=4))
    assert loss(trained) < before
    assert loss(model) == before


def test_the_rest_mass_from_the_top_k_equals_the_masked_logsumexp():
    """rest_log_mass takes log(1 - top-k mass) from the top-k values, and the exact masked pass where
    the top-k mass is too close to 1 for float32: both regimes against a float64 reference."""
    from sparsearch.fitness.teacher import rest_log_mass

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 500, generator=g) * torch.tensor([1.0, 4.0, 30.0]).view(3, 1, 1)
    index = logits.topk(20, -1).indices
    norm = torch.logsumexp(logits, -1)
    got = rest_log_mass(logits, index, logits.gather(-1, index) - norm.unsqueeze(-1), norm)
    l64 = logits.double()
    want = torch.logsumexp(l64.scatter(-1, index, float("-inf")), -1) - torch.logsumexp(l64, -1)
    assert (logits[2].softmax(-1).gather(-1, index[2]).sum(-1) > 1 - 1e-3).any()  # the masked regime is hit
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    full = torch.arange(500).expand(3, 50, 500)
    assert torch.isneginf(rest_log_mass(logits, full, logits - norm.unsqueeze(-1), norm)).all()
