"""actors/dna_import.py (`yard dna import`): real llm-dna outputs, made in the test by llm-dna's own
`calc_dna` (offline: its dataset cache and response cache, the bundled MiniLM encoder), brought
into a store beside native runs; refused with one line when made differently."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers reads it

import numpy as np
import pytest
import yaml

from actors import analysis
from actors.config import OFFLINE_ENCODER, DnaConfig, EncoderConfig
from actors.dna_import import DnaImportError, decoding_from_llm_dna, import_dna
from actors.fingerprint import (
    ProbeSet,
    decoding_settings,
    fingerprint,
    load_encoder,
    make_extractor,
    make_provenance,
    probes_sha256,
    resolve_encoder,
    write_dna,
)
from cluster.store.storage import open_store

PROBES = [
    "Tell me about the weather today and how it might change by the evening.",
    "What should I cook for dinner tonight if I only have rice, eggs and a few vegetables?",
    "Describe a good plan for a two-day trip to a city you have never visited.",
]
BASE = [
    "It is sunny and warm this morning with a light breeze from the west; by the evening clouds may "
    "gather and a short shower could cool the air before night.",
    "Fried rice is the easy answer: cook the rice, scramble the eggs, add the chopped vegetables and a "
    "little soy sauce, and dinner is ready in twenty minutes.",
    "Spend the first day walking the old town and a museum, the second on a market and a park, and keep "
    "an evening free for a long dinner somewhere the locals go.",
]
SETTINGS = {"generation": {"max_new_tokens": 64, "min_new_tokens": 0}}  # llm-dna decodes with no minimum


def answers(variant: str) -> list[str]:
    return [f"{a} ({variant}: {i})" for i, a in enumerate(BASE)]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(EncoderConfig(), device="cpu")


def native_run(store, mid: str, responses: list[str], cfg: DnaConfig, encoder) -> dict:
    """A DNA run as the host writes it; returns its provenance."""
    probes = ProbeSet(PROBES, "yardprobes_3", probes_sha256(PROBES), "test")
    prov = make_provenance(cfg, probes.sha256, cfg.encoder.name)
    vector, meta = fingerprint(responses, probes, make_extractor(cfg.dna, cfg.encoder.name), encoder,
                               model_id=mid, provenance=prov)
    run = store.new_run("dna", mid)
    write_dna(run, mid, vector, prov, meta)
    run.complete(status="ok", model_id=mid, outcome="ok")
    return prov


def calc_dna_output(tmp_path, monkeypatch, model: str, responses: list[str], **settings):
    """llm-dna's calc_dna end to end, offline: probes from its dataset cache, answers from its
    response cache (written by llm-dna's own `_save_response_cache`), the bundled encoder."""
    from llm_dna.api import DNAExtractionConfig, _generation_config, _response_cache_path, _save_response_cache, calc_dna

    cache = tmp_path / "llm-dna-cache"
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("REPTRACE_CACHE_DIR", str(cache))
    (cache / "dataset_yardprobes_n3_seed42.json").write_text(json.dumps(
        {"dataset_id": "yardprobes", "max_samples": 3, "random_seed": 42, "probe_texts": PROBES}))
    config = DNAExtractionConfig(
        model_name=model, dataset="yardprobes", max_samples=3, sentence_encoder=resolve_encoder(OFFLINE_ENCODER),
        device="cpu", encoder_device="cpu", temperature=0.0, max_length=64, output_dir=tmp_path / "out",
        metadata_file=None, log_level="WARNING", **settings)
    _save_response_cache(_response_cache_path(config, model), model, "yardprobes", PROBES, responses,
                         _generation_config(config))
    result = calc_dna(config)  # would load the model (and fail offline) were the cache not used
    assert result.output_path.is_file() and result.signature.metadata.extractor_config["provenance"][
        "response_source"] == "cache"
    return result


def yard(argv, capsys):
    from cluster.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def test_calc_dna_output_imports_and_joins_the_distance_matrix(tmp_path, monkeypatch, encoder, capsys):
    store = open_store(str(tmp_path / "store"))
    cfg = DnaConfig.model_validate(SETTINGS)
    prov = native_run(store, "llama-a", answers("a"), cfg, encoder)
    native_run(store, "qwen3-b", answers("b"), cfg, encoder)
    result = calc_dna_output(tmp_path, monkeypatch, "colleague/model-x", answers("x"))

    # llm-dna and modelyard agree on the vector for the same answers
    probes = ProbeSet(PROBES, "yardprobes_3", probes_sha256(PROBES), "test")
    ours, _ = fingerprint(answers("x"), probes, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="x",
                          provenance=prov)
    assert np.allclose(result.vector, ours, atol=1e-5)

    config = tmp_path / "dna.yaml"
    config.write_text(yaml.safe_dump({"kind": "dna", "storage": {"uri": str(tmp_path / "store")}, **SETTINGS}))
    code, out = yard(["dna", "import", str(result.output_path), "--config", str(config)], capsys)
    assert code == 0, out.err
    assert "imported" in out.out and "colleague--model-x" in out.out

    art = store.latest("dna", "colleague/model-x")
    assert art.run.marker["source"] == "import" and art.run.marker["model_id"] == "colleague/model-x"
    assert {"dna.npy", "dna.json", "dna_signature.json", "responses.json"} <= set(art.run.marker["files"])
    doc = store.get_json(f"{art.run.prefix}/dna.json")
    assert doc["provenance"]["encoder"] == OFFLINE_ENCODER and doc["provenance"]["decoding"] == prov["decoding"]
    assert doc["imported"]["from"] == str(result.output_path)
    assert np.allclose(np.load(store.locate(art.key)), result.vector)

    # `yard dna`'s analysis: the imported run joins this job's models in the distance matrix
    fps, missing = analysis.load_latest(store, ["llama-a", "qwen3-b"])
    imported, left_out = analysis.load_imported(store, set(fps), prov)
    assert missing == {} and left_out == {} and list(imported) == ["colleague/model-x"]
    ids, D = analysis.distance_matrix({**fps, **imported})
    assert ids == ["llama-a", "qwen3-b", "colleague/model-x"] and D.shape == (3, 3) and np.all(D[2, :2] > 0)

    # made differently (dna_dim 64): refused with one line naming the field, nothing written
    other = calc_dna_output(tmp_path / "other", monkeypatch, "colleague/model-y", answers("y"), dna_dim=64)
    code, out = yard(["dna", "import", str(other.output_path), "--config", str(config)], capsys)
    assert code == 2 and out.out == ""
    line = out.err.strip()
    assert "\n" not in line and str(other.output_path) in line and "dna_dim differs (128 vs 64)" in line
    assert store.runs("dna", "colleague/model-y") == []


def test_the_decoding_must_match_too(tmp_path, monkeypatch, encoder):
    """modelyard's default decoding forces 50 new tokens; llm-dna sets no minimum: not comparable."""
    store = open_store(str(tmp_path / "store"))
    native_run(store, "llama-a", answers("a"), DnaConfig.model_validate({"generation": {"max_new_tokens": 64}}), encoder)
    result = calc_dna_output(tmp_path, monkeypatch, "model-x", answers("x"))
    with pytest.raises(DnaImportError) as exc:
        import_dna(store, [str(result.output_path)])
    assert "decoding.min_new_tokens differs (50 vs 0)" in str(exc.value) and "\n" not in str(exc.value)
    assert store.runs("dna", "model-x") == []
    # renamed, into a store of comparable runs: accepted
    store2 = open_store(str(tmp_path / "store2"))
    native_run(store2, "llama-a", answers("a"), DnaConfig.model_validate(SETTINGS), encoder)
    [run] = import_dna(store2, [str(result.output_path)], names=["published-x"])
    assert run.marker["model_id"] == "published-x" and store2.latest("dna", "published-x") is not None


def test_a_responses_json_is_fingerprinted_with_the_config(tmp_path, encoder):
    from llm_dna.api import DNAExtractionConfig, _generation_config, _save_response_cache

    store = open_store(str(tmp_path / "store"))
    cfg = DnaConfig.model_validate(SETTINGS)
    native_run(store, "llama-a", answers("a"), cfg, encoder)
    path = tmp_path / "responses.json"
    _save_response_cache(path, "model-z", "yardprobes", PROBES, answers("z"),
                         _generation_config(DNAExtractionConfig(model_name="model-z", temperature=0.0, max_length=64)))
    [run] = import_dna(store, [str(path)], cfg=cfg)
    probes = ProbeSet(PROBES, "yardprobes_3", probes_sha256(PROBES), "test")
    ours, _ = fingerprint(answers("z"), probes, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="z",
                          provenance={})
    assert np.allclose(np.load(store.locate(f"{run.prefix}/dna.npy")), ours, atol=1e-5)
    assert store.get_json(f"{run.prefix}/responses.json")["items"][0]["prompt"] == PROBES[0]


def test_decoding_from_llm_dna_maps_greedy_and_sampling():
    greedy = {"max_length": 64, "temperature": 0.0, "top_p": 0.9, "use_chat_template": True, "do_sample": False}
    assert decoding_from_llm_dna(greedy, "f") == decoding_settings(DnaConfig.model_validate(SETTINGS))
    sampled = decoding_from_llm_dna({**greedy, "temperature": 0.7, "do_sample": True}, "f")
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7
    with pytest.raises(DnaImportError, match="f: generation_config: cannot read 'max_length'"):
        decoding_from_llm_dna({"temperature": 0.0}, "f")


@pytest.mark.parametrize("text, says", [
    (None, "no such file"),
    ("{not json", "not valid JSON (line 1"),
    (json.dumps({"signature": [1.0, 2.0], "metadata": {"model_name": "m"}}), "not an llm-dna DNA signature (TypeError"),
    (json.dumps({"model": "m", "items": [{"prompt": "p", "response": "r"}], "complete": False}), "complete: false"),
])
def test_bad_files_are_refused_with_one_line_naming_them(tmp_path, text, says):
    store = open_store(str(tmp_path / "store"))
    path = tmp_path / "in.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DnaImportError) as exc:
        import_dna(store, [str(path)])
    msg = str(exc.value)
    assert msg.startswith(str(path)) and says in msg and "\n" not in msg
    assert store.model_ids("dna") == []


def test_an_npz_signature_needs_allow_pickle(tmp_path, monkeypatch, encoder):
    """llm-dna pickles an .npz signature's metadata: loading one runs code from the file, so it is
    refused unless the user vouches for it; then it imports like the .json."""
    from llm_dna.dna.DNASignature import DNASignature

    store = open_store(str(tmp_path / "store"))
    native_run(store, "llama-a", answers("a"), DnaConfig.model_validate(SETTINGS), encoder)
    result = calc_dna_output(tmp_path, monkeypatch, "model-n", answers("n"))
    npz = tmp_path / "model-n_dna.npz"
    DNASignature.load(result.output_path).save(npz, format="npz")
    with pytest.raises(DnaImportError) as exc:
        import_dna(store, [str(npz)])
    assert str(exc.value).startswith(str(npz)) and "--allow-pickle" in str(exc.value) and "\n" not in str(exc.value)
    assert store.runs("dna", "model-n") == []
    [run] = import_dna(store, [str(npz)], allow_pickle=True)
    assert np.allclose(np.load(store.locate(f"{run.prefix}/dna.npy")), result.vector, atol=1e-6)
