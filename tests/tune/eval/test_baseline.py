"""tune.eval.baseline: the base's evaluation, kept in the store and keyed by everything it depends on."""
from pathlib import Path

import pytest
import torch

from cluster.models.registry import ModelRegistry
from cluster.store.storage_local import LocalStore
from tests.cluster.models.test_content import key_of, perturb, register_copy
from tune.eval.baseline import baseline_cache_key, baseline_cached, hardware_key
from tune.eval.evaluate import BenchmarkSpec, EvalConfig, load_benchmarks

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[3]
ZOO_QA = str(REPO / "configs/bench/zoo_qa.jsonl")
KOMT = str(REPO / "configs/komt_sample.jsonl")


@pytest.fixture(scope="module")
def llama(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / "llama-a"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_baseline_is_cached_per_hardware_and_benchmarks(llama, zoo, tmp_path):
    spec = ModelRegistry.load([zoo.registry_path]).get("llama-a")
    cfg = EvalConfig(max_new_tokens=8, benchmarks=[BenchmarkSpec(name="qa", task="qa", source=ZOO_QA, limit=3)])
    bench = load_benchmarks(cfg)
    store = LocalStore(tmp_path / "store")
    calls = []

    def load():
        calls.append(1)
        return llama

    cpu, content = hardware_key("cpu"), {"files_sha256": "llama-a"}
    first, cached = baseline_cached(store, "llama-a", load, bench, cfg, spec=spec, hardware=cpu, content=content)
    assert (cached, len(calls)) == (False, 1)
    second, cached = baseline_cached(store, "llama-a", load, bench, cfg, spec=spec, hardware=cpu, content=content)
    assert (cached, len(calls)) == (True, 1) and second == first
    _, cached = baseline_cached(store, "llama-a", load, bench, cfg, spec=spec, hardware={**cpu, "torch_threads": 64},
                                content=content)
    assert (cached, len(calls)) == (False, 2)
    other = load_benchmarks(cfg.model_copy(update={"benchmarks": [cfg.benchmarks[0].model_copy(update={"limit": 2})]}))
    _, cached = baseline_cached(store, "llama-a", load, other, cfg, spec=spec, hardware=cpu, content=content)
    assert (cached, len(calls)) == (False, 3)
    assert len(store.runs("baseline", "llama-a")) == 3
    with pytest.raises(ValueError, match="hardware"):
        baseline_cached(store, "llama-a", load, bench, cfg, hardware={}, content=content)


def test_baseline_of_a_base_rebuilt_under_the_same_id_is_measured_again(llama, zoo, tmp_path):
    registry = register_copy(zoo, tmp_path, "toy")
    cfg = EvalConfig(max_new_tokens=4, benchmarks=[BenchmarkSpec(name="qa", task="qa", source=ZOO_QA, limit=1)])
    bench, store, cpu = load_benchmarks(cfg), LocalStore(tmp_path / "store"), hardware_key("cpu")
    calls = []

    def load():
        calls.append(1)
        return llama

    for _ in range(2):  # unchanged: measured once, then a hit
        baseline_cached(store, "toy", load, bench, cfg, hardware=cpu, content=key_of(registry))
    assert len(calls) == 1
    perturb(tmp_path / "toy")
    _, cached = baseline_cached(store, "toy", load, bench, cfg, hardware=cpu, content=key_of(registry))
    assert (cached, len(calls)) == (False, 2)


def _judge_key(**judge_fields) -> dict:
    spec = {"name": "komt", "task": "judge", "source": KOMT, "limit": 2, "judge": {"replay": True}, **judge_fields}
    cfg = EvalConfig.model_validate({"benchmarks": [spec]})
    return baseline_cache_key("b", load_benchmarks(cfg), cfg, {"device": "cpu"}, content={"files_sha256": "x"})


def test_baseline_key_holds_the_judge_settings_that_change_ratings():
    base = _judge_key()
    for change in ({"judge_language": "ko"}, {"language_penalty": True},
                   {"judge": {"base_url": "http://judge/v1", "model": "gpt-4o"}},
                   {"judge": {"replay": True, "temperature": 0.7}}):
        assert _judge_key(**change) != base, change
    # how hard or how often the judge is asked changes no rating; defaults spelled out are defaults
    assert _judge_key(judge={"replay": True, "max_concurrency": 9, "timeout_s": 5, "temperature": 0.0}) == base


def test_hardware_key_names_device_and_threads():
    assert hardware_key("cpu") == {"device": "cpu", "torch_threads": torch.get_num_threads()}
    assert hardware_key(None)["device"] == "cpu"
