"""Every token draw of a run: the splits never share a window, and a new run never reuses old tokens."""

import random

import pytest
import torch

from tests.helpers.tiny import TEXT, tiny_tokenizer
from sparsearch.base.errors import SparsearchError
from sparsearch.fitness.config import FitnessConfig
from sparsearch.fitness.data import CalibrationConfig, python_docs_text, read_source_ids, tokenize_text
from sparsearch.launch.tokens import FILES, TokenPlan, draw, fitness_source, run_tokens


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    words, rng = TEXT.split(), random.Random(0)  # TEXT repeats itself: its windows would repeat too
    path.write_text(" ".join(rng.choice(words) for _ in range(3000)))
    return str(path)


def _rows(t):
    return {tuple(r) for r in t.tolist()}


def test_the_plan_follows_the_fitness_config():
    calib = CalibrationConfig("self", samples=16, seqlen=32)
    plan = TokenPlan.of(calib, FitnessConfig(schedule="2:64,1:128:96", pool=3, validation=2))
    assert (plan.calibration, plan.fitness, plan.validation, plan.training) == (16, 4 * 3, 4 * 2, 3)


def test_text_splits_are_disjoint_windows(text):
    tok = tiny_tokenizer()
    calib = CalibrationConfig("text", text, samples=6, seqlen=16, seed=3)
    slots = read_source_ids(calib, tok).numel() // 16
    plan = TokenPlan(16, calibration=6, fitness=8, validation=8, training=4)
    assert slots >= 26
    got = {s: draw(calib, plan, s, None, tok) for s in ("calibration", "fitness", "validation", "training")}
    for s, t in got.items():
        assert t.shape == (plan.rows(s), 16) and t.dtype == torch.int64
    sets = {s: _rows(t) for s, t in got.items()}
    assert all(len(sets[s]) == plan.rows(s) for s in sets)  # no window twice within a split
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    # seeded: the same draw again, another seed another one
    assert torch.equal(draw(calib, plan, "validation", None, tok), got["validation"])
    other = CalibrationConfig("text", text, samples=6, seqlen=16, seed=4)
    assert not torch.equal(draw(other, plan, "validation", None, tok), got["validation"])


def test_a_text_too_short_for_disjoint_fitness_and_validation_is_refused(text):
    tok = tiny_tokenizer()
    calib = CalibrationConfig("text", text, samples=6, seqlen=16)
    slots = read_source_ids(calib, tok).numel() // 16
    plan = TokenPlan(16, calibration=6, fitness=slots, validation=1)
    with pytest.raises(SparsearchError, match="do not overlap"):
        draw(calib, plan, "fitness", None, tok)


def test_a_new_run_draws_again_and_only_a_resume_reuses(text, tmp_path):
    tok = tiny_tokenizer()
    plan = TokenPlan(16, calibration=6, fitness=4, validation=4)
    first = run_tokens(tmp_path, CalibrationConfig("text", text, seqlen=16, seed=0), plan, "fitness", None, tok,
                       resume=False)
    assert (tmp_path / FILES["fitness"]).is_file()
    other = CalibrationConfig("text", text, seqlen=16, seed=1)
    assert torch.equal(run_tokens(tmp_path, other, plan, "fitness", None, tok, resume=True), first)  # kept
    fresh = run_tokens(tmp_path, other, plan, "fitness", None, tok, resume=False)  # a new run: its own seed's
    assert not torch.equal(fresh, first)
    assert run_tokens(tmp_path, other, plan, "training", None, tok, resume=False) is None  # no rows, no file
    (tmp_path / FILES["fitness"]).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(SparsearchError, match="not a readable safetensors file"):
        run_tokens(tmp_path, other, plan, "fitness", None, tok, resume=True)


@pytest.mark.parametrize("calib_source, setting, expected", [
    ("self", "auto", "python-docs"), ("text", "auto", "text"), ("self", "calibration", "self"),
    ("text", "python-docs", "python-docs"), ("dataset", "auto", "dataset")])
def test_the_fitness_source_is_python_docs_only_for_a_self_sampled_calibration(calib_source, setting, expected):
    calib = CalibrationConfig(calib_source, None if calib_source == "self" else "x", samples=8, seqlen=32, seed=5)
    got = fitness_source(calib, FitnessConfig(source=setting))
    assert got.source == expected
    assert (got.samples, got.seqlen, got.seed) == (8, 32, 5)  # the calibration's shape and seed
    assert got.location == (None if expected in ("self", "python-docs") else "x")


def test_python_docs_fitness_tokens_are_disjoint_windows_of_pythons_reference_text():
    text = python_docs_text()
    assert text is not None and len(text) > 400_000 and '"assert" statement' in text
    tok = tiny_tokenizer()
    ids = tokenize_text(text, tok)
    calib = fitness_source(CalibrationConfig("self", samples=4, seqlen=16, seed=1), FitnessConfig())
    plan = TokenPlan(16, calibration=4, fitness=8, validation=6, training=3)
    windows = {tuple(ids[i * 16:(i + 1) * 16].tolist()) for i in range(ids.numel() // 16)}
    got = {s: _rows(draw(calib, plan, s, None, tok)) for s in ("fitness", "validation", "training")}
    for split, rows in got.items():
        assert len(rows) == plan.rows(split) and rows <= windows, split  # whole windows of the text
    assert not got["fitness"] & got["validation"] and not got["training"] & (got["fitness"] | got["validation"])
