"""tune/sweep/timing.py: the Score's speed half from a timing phase (every model alone, interleaved,
repeated, fixed token counts), applied to the leaderboard rows."""
from pathlib import Path

import pytest

from cluster.models.loading import load_model
from cluster.models.registry import ModelRegistry
from tests.tune.sweep.test_sweep import two_gpu_base_registry
from tune.sweep.leaderboard import rank_rows, render_markdown
from tune.sweep.timing import (BASELINE, TimingConfig, apply_timing, generate_fixed, time_in_fresh_processes,
                               time_models)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["Tell me about the weather today.", "비 오는 날에는 무엇을 하나요?", "What do you cook at home?"]


@pytest.fixture(scope="module")
def llama(zoo):
    registry = ModelRegistry.load([zoo.registry_path])
    model, tokenizer, _ = load_model("llama-a", registry)
    return model, tokenizer


def _texts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in PROMPTS], False


def test_every_row_generates_exactly_new_tokens_even_past_eos(llama):
    model, tokenizer = llama
    texts, _ = _texts(tokenizer)
    # A short answer ends before 40 tokens when EOS may stop it; the timing phase never stops early,
    # so every model is timed over the same token count.
    seconds, tokens = generate_fixed(model, tokenizer, texts, 40, 2)
    assert tokens == len(texts) * 40 and seconds > 0


def test_time_models_interleaves_rotates_and_pairs_each_visit(llama):
    model, tokenizer = llama
    visits, loads = [], []

    def loader(name):
        def load():
            loads.append(name)
            return model, tokenizer
        return load

    cfg = TimingConfig(rounds=3, prompts=2, new_tokens=4, repeats=2, min_visit_s=0)
    out = time_models({BASELINE: loader(BASELINE), "a": loader("a"), "b": loader("b")}, _texts, cfg, 2,
                      on_visit=lambda done, total, name: visits.append(name))
    # each round visits every candidate once, starting one further along each time
    assert visits == ["a", "b", "b", "a", "a", "b"]
    assert sorted(loads) == sorted([BASELINE, "a", "b"])  # small models stay loaded between rounds
    models = out["models"]
    assert {m["generated_tokens"] for m in models.values()} == {2 * 4}
    assert len(models[BASELINE]["sec_per_token_runs"]) == 6  # timed in every visit, beside each candidate
    base = models[BASELINE]["sec_per_token_runs"]
    for name in ("a", "b"):
        m = models[name]
        assert len(m["sec_per_token_runs"]) == 3 and len(m["speed_norm_runs"]) == 3
        paired = [base[i] for i, v in enumerate(visits) if v == name]  # the base's time in the same visit
        assert m["speed_norm_runs"] == pytest.approx([1 - c / b for c, b in zip(m["sec_per_token_runs"], paired)])
        assert sorted(m["speed_norm_runs"])[1] == pytest.approx(m["speed_norm"])  # the median
        assert m["speed_norm_spread"] == pytest.approx((max(m["speed_norm_runs"]) - min(m["speed_norm_runs"])) / 2)
    assert "speed_norm" not in models[BASELINE]


def test_fresh_process_timing_pairs_each_candidate_with_its_rounds_baseline():
    # The schedule a vLLM sweep's timing phase runs: `measure` stands in for the Ray task that starts
    # vLLM in a process of its own (vLLM needs a CUDA GPU; the real task, tune/sweep/timing_phase.py's
    # time_one_vllm, runs on the GPU machine: tests/bench/device/gpu-round.sh identity).
    speed = {BASELINE: [1.0, 1.1, 1.2], "a": [0.5, 0.5, 0.7], "b": [1.1, 1.1, 1.1]}  # seconds per visit
    calls, visits = [], []

    def measure(name):
        calls.append(name)
        return speed[name][sum(c == name for c in calls) - 1], 100

    cfg = TimingConfig(rounds=3, prompts=20, new_tokens=5)
    out = time_in_fresh_processes(measure, ["a", "b"], cfg, 8, on_visit=lambda d, t, n: visits.append((d, t, n)))
    # the base opens even rounds and closes odd ones; the candidates' order rotates
    assert calls == [BASELINE, "a", "b", "b", "a", BASELINE, BASELINE, "a", "b"]
    assert visits == [(1, 6, "a"), (2, 6, "b"), (3, 6, "b"), (4, 6, "a"), (5, 6, "a"), (6, 6, "b")]
    models = out["models"]
    assert out["fresh_process"] is True and out["prompts"] == 20 and models["a"]["generated_tokens"] == 100
    assert models[BASELINE]["sec_per_token_runs"] == pytest.approx([0.010, 0.011, 0.012])
    # each round's candidate against that round's base
    assert models["a"]["speed_norm_runs"] == pytest.approx([0.5, 1 - 0.5 / 1.1, 1 - 0.7 / 1.2])
    assert models["b"]["speed_norm_runs"] == pytest.approx([-0.1, 0.0, 1 - 1.1 / 1.2])
    assert models["b"]["speed_norm"] == pytest.approx(0.0)  # the median
    assert models["a"]["speed_norm_spread"] == pytest.approx((0.7 / 1.2 - 0.5 / 1.1) / 2)
    with pytest.raises(ValueError, match="baseline"):
        time_in_fresh_processes(measure, [BASELINE, "a"], cfg, 8)


def test_a_vllm_visit_times_exact_token_counts_and_keeps_the_fastest(zoo, tmp_path, monkeypatch):
    # time_one_vllm with a stand-in for the vLLM model (vLLM needs a CUDA GPU; the real one runs in
    # tests/bench/device/gpu-round.sh identity): the base's rendered prompts as token ids, one untimed
    # warm-up, `repeats` timed calls of exactly new_tokens each with EOS ignored, the fastest kept,
    # the engine closed.
    import cluster.engines.engine_vllm as engine_vllm
    from cluster.config import load_config
    from cluster.engines.engine_vllm import VllmOutput
    from tune.config import SweepConfig
    from tune.sweep.sweep import validate
    from tune.sweep.timing_phase import time_one_vllm

    repo = Path(__file__).resolve().parents[3]
    qa = f"eval.benchmarks=[{{name: qa, task: qa, source: {repo / 'configs/bench/zoo_qa.jsonl'}}}]"
    overrides = ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={tmp_path}", qa,
                 "timing={rounds: 1, prompts: 3, new_tokens: 7, repeats: 3}"]
    checked = validate(load_config(repo / "configs/sweep.demo.yaml", SweepConfig, overrides), "sweep.demo.yaml",
                       [str(zoo.registry_path)])
    cfg = load_config(repo / "configs/sweep.demo.yaml", SweepConfig,
                      [*overrides, "eval.engine=vllm", "resources.gpus_per_trial=1"])
    calls, closed = [], []

    class StandIn:
        def generate(self, ids, *, max_new_tokens, min_new_tokens=0, ignore_eos=False):
            calls.append((len(ids), max_new_tokens, min_new_tokens, ignore_eos, all(isinstance(i, int) for i in ids[0])))
            return VllmOutput(["x"] * len(ids), [max_new_tokens] * len(ids), [9.0, 2.0, 3.0, 4.0][len(calls) - 1])

        def close(self):
            closed.append(True)

    registry = ModelRegistry.load([zoo.registry_path])
    monkeypatch.setattr(engine_vllm, "load_vllm", lambda model_id, reg, settings: (
        StandIn(), load_model(model_id, registry)[1], None, False))
    seconds, tokens, device = time_one_vllm(cfg.model_dump(), [str(zoo.registry_path)], str(tmp_path), None,
                                            checked.benchmarks, BASELINE, None)
    assert calls == [(1, 2, 0, False, True)] + [(3, 7, 7, True, True)] * 3
    assert (seconds, tokens) == (2.0, 21) and closed == [True] and device

    # a candidate's visit: its saved model/ on the base's num_gpus (1 here), as its trial evaluated
    # it, also where trials share a GPU (int(0.25) GPUs was a tensor-parallel size of 0)
    (tmp_path / "cand").mkdir()
    (tmp_path / "cand" / "model").symlink_to(zoo.zoo_dir / cfg.base)
    loaded, calls[:] = [], []
    monkeypatch.setattr(engine_vllm, "load_vllm_dir", lambda model_id, path, settings, num_gpus=1: (
        loaded.append((model_id, path, num_gpus)), StandIn())[1])
    shared = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"gpus_per_trial": 0.25})})
    time_one_vllm(shared.model_dump(), [str(zoo.registry_path)], str(tmp_path), None, checked.benchmarks, "t1", "cand")
    assert loaded == [("t1", str(tmp_path / "cand" / "model"), 1)] and len(calls) == 4

    # a base that runs tensor parallel (registry num_gpus 2): its candidate's visit does too
    loaded[:], calls[:] = [], []
    two = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"gpus_per_trial": 2})})
    time_one_vllm(two.model_dump(), [str(two_gpu_base_registry(zoo, tmp_path))], str(tmp_path), None,
                  checked.benchmarks, "t1", "cand")
    assert loaded == [("t1", str(tmp_path / "cand" / "model"), 2)]


def test_time_models_needs_the_baseline():
    with pytest.raises(ValueError, match="baseline"):
        time_models({"a": lambda: None}, _texts, TimingConfig(rounds=1), 1)


def _timing(**speed):
    models = {BASELINE: {"sec_per_token": 0.010}}
    for name, (spt, norm, spread) in speed.items():
        models[name] = {"sec_per_token": spt, "speed_norm": norm, "speed_norm_spread": spread}
    return {"models": models}


def test_apply_timing_rescores_ok_rows_and_keeps_the_trials_own_figures():
    rows = [
        {"trial_id": "copy", "status": "ok", "perf_norm": 1.0, "sec_per_token": 0.013, "score": 0.403},
        {"trial_id": "pruned", "status": "ok", "perf_norm": 0.8, "sec_per_token": 0.011, "score": 0.5},
        {"trial_id": "broken", "status": "error", "error": "boom"},
    ]
    baseline = {"model_id": "base", "sec_per_token": 0.009}
    out = apply_timing(rows, baseline, _timing(copy=(0.0101, -0.01, 0.02), pruned=(0.007, 0.3, 0.04)))
    copy, pruned, broken = out
    assert copy["score"] == pytest.approx(0.495) and copy["score_spread"] == pytest.approx(0.01)
    assert copy["score_in_trial"] == 0.403 and copy["sec_per_token_in_trial"] == 0.013
    assert pruned["score"] == pytest.approx(0.55) and pruned["speed_norm"] == pytest.approx(0.3)
    assert broken == rows[2]
    assert baseline["sec_per_token"] == 0.010
    # a random-weight base scores perf 0: no PerfNorm, no Score, but the timed speed replaces the trial's
    (random,) = apply_timing([{"trial_id": "copy", "status": "ok", "perf_norm": None, "speed_norm": -0.22,
                               "sec_per_token": 0.013, "score": None}], {}, _timing(copy=(0.0101, -0.01, 0.02)))
    assert random["score"] is None and random["speed_norm"] == pytest.approx(-0.01)
    assert random["speed_norm_in_trial"] == -0.22


def test_leaderboard_flags_scores_within_noise():
    rows = [
        {"trial_id": "a", "status": "ok", "score": 0.60, "score_spread": 0.01},
        {"trial_id": "b", "status": "ok", "score": 0.595, "score_spread": 0.01},  # 0.005 apart: noise
        {"trial_id": "c", "status": "ok", "score": 0.50, "score_spread": 0.01},
    ]
    ranked = rank_rows(rows)
    assert [r.get("within_noise") for r in ranked] == [None, True, False]
    md = render_markdown([{**r, "pareto": False} for r in ranked], {"model_id": "base"}, "t")
    assert "≈ above" in md and "| ≈ |" in md
    assert md.count("0.0100") == 3  # the ± column


def test_timing_config_bounds(tmp_path):
    from cluster.config import ConfigError, load_config
    from tune.config import SweepConfig

    demo = Path(__file__).resolve().parents[3] / "configs" / "sweep.demo.yaml"
    with pytest.raises(ConfigError, match="timing.rounds"):
        load_config(demo, SweepConfig, ["timing.rounds=0"])
