import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.store.storage_local import LocalStore
from tests.cluster.models.test_content import key_of, perturb, register_copy
from tune.compress.distill import TEACHER_KIND, distill, stored_teacher_logits, teacher_logits_cached
from tune.compress.prune import remove_layers

CORPUS = Path(__file__).resolve().parents[3] / "cluster" / "models" / "zoo_corpus"
CONTENT = {"files_sha256": "llama-a"}  # stands in for model_content_key of the zoo's llama-a


class Untouchable:
    """Stands in for the teacher / tokenizer on a cache hit: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"teacher touched on a cache hit ({name})")

    def __call__(self, *a, **kw):
        raise AssertionError("teacher called on a cache hit")


@pytest.fixture(scope="module")
def texts():
    lines = []
    for f in sorted(CORPUS.glob("*.txt"))[:8]:
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:2]
    assert len(lines) == 16
    return lines


@pytest.fixture(scope="module")
def teacher(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / "llama-a"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, teacher, texts):
    model, tok = teacher
    root = tmp_path_factory.mktemp("store")
    first = teacher_logits_cached(LocalStore(str(root)), "llama-a", model, tok, texts, top_k=16, max_length=64,
                                  content=CONTENT)
    return root, first


def _student(teacher):
    return remove_layers(copy.deepcopy(teacher[0]), [2, 3])


def test_teacher_cache_computed_once(cached, texts):
    root, first = cached
    assert first.teacher_forward_passes == len(texts) == 16
    assert len(first) == 16 and first.top_k == 16
    for ids, vals, idx in zip(first.input_ids, first.topk_values, first.topk_indices):
        assert vals.dtype == np.float16 and idx.dtype == np.int32
        assert vals.shape == idx.shape == (len(ids), 16)
        assert np.all(np.diff(vals.astype(np.float32), axis=1) <= 0)  # sorted, highest first

    # a new store object over the same directory: a hit, the teacher never touched
    again = teacher_logits_cached(LocalStore(str(root)), "llama-a", Untouchable(), Untouchable(), texts,
                                  top_k=16, max_length=64, content=CONTENT)
    assert again.teacher_forward_passes == 0
    assert again.prefix == first.prefix
    for a, b in zip(first.input_ids, again.input_ids):
        assert np.array_equal(a, b)
    for a, b in zip(first.topk_values, again.topk_values):
        assert np.array_equal(a, b)
    for a, b in zip(first.topk_indices, again.topk_indices):
        assert np.array_equal(a, b)
    runs = LocalStore(str(root)).runs(TEACHER_KIND, "llama-a")
    assert len(runs) == 1 and runs[0].ok


def test_teacher_cache_key_includes_top_k(cached, teacher, texts):
    root, _ = cached
    model, tok = teacher
    other = teacher_logits_cached(LocalStore(str(root)), "llama-a", model, tok, texts[:3], top_k=4, max_length=64,
                                  content=CONTENT)
    assert other.teacher_forward_passes == 3 and other.top_k == 4


def test_teacher_rebuilt_under_the_same_id_is_a_cache_miss(zoo, texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = register_copy(zoo, tmp_path, "toy")
    store = LocalStore(str(tmp_path / "store"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "toy")
    args = dict(top_k=4, max_length=32)
    first = teacher_logits_cached(store, "toy", AutoModelForCausalLM.from_pretrained(tmp_path / "toy"), tok,
                                  texts[:2], content=key_of(registry), **args)
    # unchanged: the trial's lookup with the same content key hits
    assert stored_teacher_logits(store, "toy", texts[:2], content=key_of(registry), **args).prefix == first.prefix
    perturb(tmp_path / "toy")
    rebuilt = key_of(registry)
    assert stored_teacher_logits(store, "toy", texts[:2], content=rebuilt, **args) is None
    again = teacher_logits_cached(store, "toy", AutoModelForCausalLM.from_pretrained(tmp_path / "toy"), tok,
                                  texts[:2], content=rebuilt, **args)
    assert again.teacher_forward_passes == 2 and again.prefix != first.prefix
    assert not all(np.array_equal(a, b) for a, b in zip(first.topk_values, again.topk_values))


def test_distill_lowers_kd_loss(cached, teacher):
    _, cache = cached
    student = _student(teacher)
    assert student.config.num_hidden_layers == 4
    out = distill(student, cache, kd_samples=16, temperature=2.0, steps=20, lr=1e-3, batch_size=4)
    print("KD loss", out)
    assert out["steps"] == 20 and out["kd_samples"] == 16
    assert np.isfinite(out["kd_loss_first"]) and np.isfinite(out["kd_loss_last"])
    assert out["kd_loss_last"] < out["kd_loss_first"]


def test_distill_kd_samples_too_large(cached, teacher):
    _, cache = cached
    with pytest.raises(ValueError, match="kd_samples") as err:
        distill(_student(teacher), cache, kd_samples=17)
    assert "\n" not in str(err.value)


def test_distill_zero_samples_is_a_noop(cached, teacher):
    _, cache = cached
    student = _student(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    out = distill(student, cache, kd_samples=0)
    assert out == {"kd_loss_first": None, "kd_loss_last": None, "steps": 0, "kd_samples": 0}
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
