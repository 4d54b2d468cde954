"""ModelHost in-process on the real zoo and the real offline encoder: a warm queue, the gates
failing models with their reasons, artifacts kept or published, memory returned."""
import json
import weakref

import numpy as np
import pytest
import yaml

import cluster.models.loading
from llm_dna.dna.DNASignature import DNASignature
from actors.config import DnaConfig
from actors.fingerprint import probes_sha256
from actors.host import ModelHost
from cluster.ops.jobs import start_job
from cluster.ops.progress import ProgressReporter
from cluster.store.storage import open_store

PROBES = [
    "Tell me about the weather today and how it might change by the evening.",
    "What should I cook for dinner tonight if I only have rice, eggs and a few vegetables?",
    "Describe a good plan for a two-day trip to a city you have never visited.",
    "What makes a walk in the forest relaxing? Describe what you might see and hear.",
    "How can a student prepare well for an important exam in one week?",
    "Explain how a smartphone has changed the way people spend a normal day.",
    "What are some simple habits that help a person sleep better at night?",
    "Describe a traditional holiday and the things families usually do together.",
]
ITEM = (PROBES, "test-probes_8", probes_sha256(PROBES))
FAST = {"generation": {"max_new_tokens": 56, "min_new_tokens": 40, "batch_size": 4}}


def make_cfg(**sections) -> dict:
    data = {**FAST}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return DnaConfig.model_validate(data).model_dump(mode="json")


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


@pytest.fixture
def loaded(monkeypatch):
    """Weak references to every model the host loads (the host must let go of each)."""
    refs = []
    real = cluster.models.loading.load_model

    def spy(*args, **kwargs):
        model, tok, plan = real(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model, tok, plan

    monkeypatch.setattr(cluster.models.loading, "load_model", spy)
    return refs


def files_of(store, outcome):
    prefix = outcome["artifact"] + "/"
    return sorted(k[len(prefix):] for k in store.list_keys(prefix))


def test_a_warm_host_runs_a_queue_and_bad_models_do_not_stop_it(zoo, tmp_path, store, loaded, monkeypatch):
    import actors.fingerprint

    encoder_loads = []
    real_load_encoder = actors.fingerprint.load_encoder
    monkeypatch.setattr(actors.fingerprint, "load_encoder",
                        lambda *a, **k: encoder_loads.append(1) or real_load_encoder(*a, **k))
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"kind": "models", "models": {
        "gone": {"source": str(tmp_path / "nowhere"), "params_b": 0.001, "family": "llama"}}}))
    phases = []
    real_phase = ProgressReporter.phase
    monkeypatch.setattr(ProgressReporter, "phase",
                        lambda self, name, item=None, **kw: phases.append((name, item)) or real_phase(self, name, item, **kw))
    job_id = start_job(store, "dna")
    host = ModelHost("host-0", make_cfg(), [str(zoo.registry_path), str(extra)], store.uri, None, job_id)
    models = ["llama-a", "gone", "qwen3-b", "no-such-model", "exaone4-c"]
    outcomes = host.run_queue([(m, *ITEM) for m in models])

    assert [o["status"] for o in outcomes] == ["ok", "failed", "ok", "failed", "ok"]
    by_id = {o["model_id"]: o for o in outcomes}
    assert by_id["gone"]["reason"].startswith("model gone: local path ") and "nowhere does not exist" in by_id["gone"]["reason"]
    assert by_id["no-such-model"]["reason"].startswith("model 'no-such-model': unknown model id")
    for o in outcomes:
        assert "\n" not in o["reason"] and (o["status"] == "ok") == (o["reason"] == "")

    # start costs paid once, per-model timings for each
    report = host.host_report()
    assert encoder_loads == [1]
    assert {"start_s", "imports_s", "cuda_init_s", "encoder_load_s"} <= set(report) and report["cuda_init_s"] == 0.0
    assert [m["model_id"] for m in report["models"]] == models
    for m in report["models"]:
        if m["status"] == "ok":
            assert m["load_s"] > 0 and m["generate_s"] > 0 and m["embed_s"] > 0 and m["prompts"] == 8
            assert m["total_s"] >= m["load_s"] + m["gate_s"] + m["generate_s"] + m["embed_s"] + m["unload_s"] - 1e-3

    # every loaded model was let go of, and collected
    assert len(loaded) == 3 and all(r() is None for r in loaded)
    assert all(o["memory"]["model_collected"] and o["memory"]["returned"] for o in outcomes)
    assert report["memory_leaks"] == []

    # published: dna.npy wins, with responses, provenance and timings beside it
    for mid in ("llama-a", "qwen3-b", "exaone4-c"):
        art = store.latest("dna", mid, prefer=(".npy",))
        assert art.name == "dna.npy" and art.run.prefix == by_id[mid]["artifact"]
        assert files_of(store, by_id[mid]) == ["_COMPLETE.json", "dna.json", "dna.npy", "dna_signature.json",
                                               "outcome.json", "responses.json", "timings.json"]
        responses = store.get_json(f"{art.run.prefix}/responses.json")
        assert responses["model"] == mid and responses["count"] == 8 and responses["complete"] is True
        assert [i["prompt"] for i in responses["items"]] == PROBES
        # llm-dna's decoding record (greedy = temperature 0), modelyard's own settings beside it
        assert responses["generation_config"] == {"max_length": 56, "temperature": 0.0, "top_p": 0.9,
                                                  "use_chat_template": True, "do_sample": False}
        assert responses["yard_generation"]["min_new_tokens"] == 40
        assert np.allclose(DNASignature.load(store.locate(f"{art.run.prefix}/dna_signature.json")).signature,
                           np.load(store.locate(art.key)))
        dna = store.get_json(f"{art.run.prefix}/dna.json")
        vector = np.load(store.locate(art.key))
        assert vector.dtype == np.float32 and vector.shape == (128,) and np.allclose(vector, dna["vector"])
        assert dna["provenance"]["probe_sha256"] == ITEM[2]
        assert dna["provenance"]["decoding"]["max_new_tokens"] == 56
        assert store.get_json(f"{art.run.prefix}/outcome.json") == json.loads(json.dumps(by_id[mid]))
    # failed: kept for the post-mortem, never published
    for mid in ("gone", "no-such-model"):
        assert store.latest("dna", mid) is None
        assert files_of(store, by_id[mid]) == ["_COMPLETE.json", "outcome.json"]

    # yard status sees the host, its phase and model
    assert phases[:2] == [("starting", None), ("idle", None)]
    assert [p for p in phases if p[1] == "llama-a"] == [(p, "llama-a") for p in (
        "loading", "gate", "generating", "validating", "embedding", "unloading")]
    assert [p for p in phases if p[1] == "gone"] == [("loading", "gone"), ("unloading", "gone")]
    record = store.get_state(f"progress/{job_id}/host-0.json")
    assert record["phase"] == "idle" and record["last_model"]["model_id"] == "exaone4-c"
    assert record["done"] == record["total"] == 24  # the two failed models' prompts left the total
    assert record["host_start"]["encoder_load_s"] == report["encoder_load_s"]
    host.close()
    assert store.get_state(f"progress/{job_id}/host-0.json")["status"] == "succeeded"


def test_sanity_gate_fails_the_model_before_any_generation(zoo, store, loaded):
    host = ModelHost("h", make_cfg(gates={"sanity_min_chars": 5000}), [str(zoo.registry_path)], store.uri, None, None)
    out = host.run_model("llama-a", *ITEM)
    assert (out["status"], out["gate"], out["phase"]) == ("failed", "sanity", "gate")
    assert out["reason"].startswith("model llama-a: sanity gate: reply of ") and "chars < 5000: '" in out["reason"]
    assert files_of(store, out) == ["_COMPLETE.json", "outcome.json"]  # generation never ran
    assert store.latest("dna", "llama-a") is None
    assert out["timings"]["generate_s"] == 0.0 and all(r() is None for r in loaded)


def test_response_validation_keeps_responses_but_publishes_no_dna(zoo, store):
    host = ModelHost("h", make_cfg(gates={"min_avg_chars": 5000}), [str(zoo.registry_path)], store.uri, None, None)
    out = host.run_model("qwen3-b", *ITEM)
    assert (out["status"], out["gate"], out["phase"]) == ("failed", "validation", "validating")
    stats = out["stats"]
    assert stats["n"] == 8 and stats["valid_fraction"] == 1.0 and 100 < stats["avg_chars"] < 5000
    assert out["reason"] == f"model qwen3-b: response validation: average reply {stats['avg_chars']:.1f} chars <= 5000"
    assert files_of(store, out) == ["_COMPLETE.json", "outcome.json", "responses.json"]
    assert store.latest("dna", "qwen3-b") is None
    run = store.runs("dna", "qwen3-b")[-1]
    assert run.complete and run.marker["status"] == "failed" and run.marker["gate"] == "validation"
    assert store.get_json(f"{out['artifact']}/responses.json")["count"] == 8


def test_watchdog_stops_a_slow_model_after_its_first_batch(zoo, store, loaded):
    cfg = make_cfg(gates={"watchdog": [{"max_params_b": None, "seconds_per_prompt": 1e-6}]})
    host = ModelHost("h", cfg, [str(zoo.registry_path)], store.uri, None, None)
    out = host.run_model("llama-a", *ITEM)
    assert (out["status"], out["gate"], out["phase"]) == ("failed", "watchdog", "generating")
    assert out["reason"].startswith("model llama-a: ") and out["reason"].endswith(
        " s/prompt over the 1e-06 s limit for models of any size after 4 prompts")  # batch 1 of 2
    assert store.latest("dna", "llama-a") is None and all(r() is None for r in loaded)


def test_an_exception_in_generation_is_an_error_with_a_signature(zoo, store, loaded, monkeypatch):
    import actors.generation

    real = actors.generation.generate_batched

    def broken(model, tok, texts, gen, **kw):
        if len(texts) > 1:  # the sanity prompt passes, the probes blow up
            raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")
        return real(model, tok, texts, gen, **kw)

    monkeypatch.setattr(actors.generation, "generate_batched", broken)
    host = ModelHost("h", make_cfg(), [str(zoo.registry_path)], store.uri, None, None)
    first, second = host.run_queue([("llama-a", *ITEM), ("llama-a", *ITEM)])
    assert (first["status"], first["gate"]) == ("error", None)
    assert first["error_signature"] == "RuntimeError: CUDA error: device-side assert triggered"
    assert first["reason"] == "model llama-a: generating: RuntimeError: CUDA error: device-side assert triggered"
    assert second["error_signature"] == first["error_signature"]  # deterministic: the job stops retrying
    assert store.latest("dna", "llama-a") is None and all(r() is None for r in loaded)


def test_a_probe_hash_that_does_not_match_its_probes_is_refused(zoo, store):
    host = ModelHost("h", make_cfg(), [str(zoo.registry_path)], store.uri, None, None)
    out = host.run_model("llama-a", PROBES, "test-probes_8", "0" * 64)
    assert out["status"] == "error" and "does not match its 8 probes" in out["reason"]


class StandInEngine:
    """vLLM's engine as the host drives it (a stand-in: vLLM runs on a CUDA GPU only; the real one
    ran in issue 26's round on the H100). Starts, swaps and closes are recorded in `events`."""

    engine = "vllm"
    events: list = []

    def __init__(self, model_id, path, *, settings, signature, **_):
        self.model_id, self.path, self.signature, self.llm = model_id, path, signature, object()
        self.events.append(("start", model_id))

    def swap(self, model_id, path):
        if model_id.endswith("bad-swap"):
            self.events.append(("swap failed", model_id))
            raise RuntimeError("reload_weights failed")
        self.events.append(("swap", model_id))
        self.model_id, self.path = model_id, path

    def close(self):
        if self.llm is not None:
            self.events.append(("close", self.model_id))
        self.llm = None

    def generate(self, prompt_ids, *, max_new_tokens, min_new_tokens=0, **_):
        from cluster.engines.engine_vllm import VllmOutput

        texts = [f"{self.model_id} answers prompt {i}: " + "a reply long enough for every gate, " * 4
                 for i in range(len(prompt_ids))]
        return VllmOutput(texts, [max_new_tokens] * len(prompt_ids), 0.01)


def test_a_broken_checkpoint_leaves_the_warm_vllm_engine_and_a_failed_swap_closes_it(zoo, tmp_path, store, monkeypatch):
    """On the H100 (issue 26) the round's broken copy was refused by the checkpoint check, and the
    warm engine was closed anyway: 6 s there, a whole new engine (80-120 s) had the next model had the
    same shape. load_vllm, the check, the tokenizer and the host's queue are real here; the engine is
    the stand-in above."""
    import shutil

    import cluster.engines.engine_vllm as ev
    from cluster.node import NodeFacts

    broken = tmp_path / "llama-a-broken"
    shutil.copytree(zoo.zoo_dir / "llama-a", broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * 2}))
    same = {"source": str(zoo.zoo_dir / "llama-a"), "params_b": 0.001, "family": "llama"}
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"kind": "models", "models": {
        "llama-a-broken": {**same, "source": str(broken)}, "llama-a-copy": same, "llama-a-bad-swap": same,
        "llama-a-copy2": same}}))
    monkeypatch.setattr(ev, "VllmModel", StandInEngine)
    monkeypatch.setattr(StandInEngine, "events", [])
    host = ModelHost("host-0", make_cfg(), [str(zoo.registry_path), str(extra)], store.uri, None, start_job(store, "dna"))
    host.engine = "vllm"  # after the start: the host's own start checks for a GPU, as it should
    host.node = NodeFacts("gpu-node", cuda=True, gpu_names=("H100",), cuda_capabilities=(9.0,), gpu_mem_gib=(80.0,),
                          cpu_mem_gib=64.0, cpu_count=16)
    models = ["llama-a", "llama-a-broken", "llama-a-copy", "llama-a-bad-swap", "llama-a-copy2"]
    outcomes = host.run_queue([(m, *ITEM) for m in models])

    assert [o["status"] for o in outcomes] == ["ok", "error", "ok", "error", "ok"]
    assert "CheckpointMismatch" in outcomes[1]["reason"] and "reload_weights failed" in outcomes[3]["reason"]
    assert StandInEngine.events == [
        ("start", "llama-a"),
        ("swap", "llama-a-copy"),  # the broken copy between them left the engine warm
        ("swap failed", "llama-a-bad-swap"), ("close", "llama-a-copy"),  # weights in no known state: closed
        ("start", "llama-a-copy2")]
    assert [o["engine_reused"] for o in (outcomes[0], outcomes[2], outcomes[4])] == [False, True, False]
    # and the fingerprint's timings.json says so, for a later plan to price same-shape models by
    assert store.get_json(outcomes[2]["artifact"] + "/timings.json")["engine_reused"] is True
    assert outcomes[1]["memory"]["engine_kept"] is True  # not an unload whose memory failed to come back
    assert host.host_report()["memory_leaks"] == []
    host.close()
    assert StandInEngine.events[-1] == ("close", "llama-a-copy2")
