"""`yard dna import PATH...`: DNA made elsewhere (llm-dna's `calc-dna`, a colleague's run, published
vectors) as store runs of their own, joining `yard dna`'s distance matrix only when comparable.

    yard dna import out/rand/Qwen_Qwen2.5-0.5B/Qwen_Qwen2.5-0.5B_dna.json   # llm-dna signature (.json/.npz)
    yard dna import colleague/responses.json --config configs/dna.demo.yaml  # answers: DNA computed here
    yard dna import published_dna.json --name qwen-0.5b-published --store s3://bucket/yard

What a file can be: llm-dna's signature (`DNASignature.save`, json or npz, as `calc-dna` writes
it, or modelyard's own `dna_signature.json`); an llm-dna `responses.json` cache (fingerprinted
here with the config's encoder and projection). A signature takes its decoding from the
provenance `calc-dna` records, else from the `responses.json` beside it.

Each file becomes one run `dna/<model>/<run>/` (`dna.npy`, `dna.json` with the provenance and
where it came from, `dna_signature.json`, `responses.json` when answers came with it), completed
with `source: import`. Before anything is written, every file's provenance (pipeline, encoder,
ordered probes, projection seed, dims, aggregation, decoding, engine) is checked against the
store's newest DNA run and the other files; a mismatch is refused with one line naming the file
and the field (exit 2).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from actors.config import OFFLINE_ENCODER, DnaConfig, GenerationConfig
from actors.fingerprint import (
    ProvenanceError,
    check_comparable,
    decoding_settings,
    probes_sha256,
    resolve_encoder,
    write_dna,
)
from cluster.config import UserError, read_text
from cluster.ops.jobs import REPO_ROOT
from cluster.store.storage import ArtifactStore, RunInfo

log = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "dna.demo.yaml"


class DnaImportError(UserError, ValueError):
    """A file that cannot be imported, or whose DNA is not comparable (one line naming it)."""


@dataclass
class Incoming:
    path: Path
    kind: str  # "llm-dna signature" or "responses"
    model_id: str
    vector: np.ndarray
    provenance: dict[str, Any]
    signature: dict[str, Any]  # llm-dna's DNAMetadata as a dict
    responses: dict | None = None


# --- decoding and provenance -------------------------------------------------------------------
def decoding_from_llm_dna(gc: dict, where: str) -> dict[str, Any]:
    """modelyard's decoding record (`decoding_settings`) for llm-dna's generation_config. llm-dna
    sets no minimum length: min_new_tokens 0."""
    try:
        sample = bool(gc.get("do_sample", float(gc["temperature"]) > 0))
        out = {"max_new_tokens": int(gc["max_length"]), "min_new_tokens": 0, "do_sample": sample,
               "use_chat_template": bool(gc["use_chat_template"])}
        if sample:
            out.update(temperature=float(gc["temperature"]), top_p=float(gc["top_p"]), seed=None)
    except (KeyError, TypeError, ValueError) as exc:
        raise DnaImportError(f"{where}: generation_config: cannot read {exc} (llm-dna writes max_length, "
                             "temperature, top_p, use_chat_template, do_sample)") from None
    return out


def decoding_from_responses(payload: dict, where: str) -> dict[str, Any] | None:
    """The decoding of a responses.json: modelyard's own settings when it wrote the file, else
    llm-dna's generation_config; None when neither is recorded."""
    if isinstance(payload.get("yard_generation"), dict):
        try:
            gen = GenerationConfig.model_validate(payload["yard_generation"])
        except ValueError as exc:
            raise DnaImportError(f"{where}: yard_generation: {str(exc).splitlines()[0]}") from None
        return decoding_settings(DnaConfig(generation=gen))
    if isinstance(payload.get("generation_config"), dict):
        return decoding_from_llm_dna(payload["generation_config"], where)
    return None


def encoder_id(name: str) -> str:
    """The offline encoder is recorded by name by modelyard and by its local path by llm-dna."""
    try:
        return OFFLINE_ENCODER if name == resolve_encoder(OFFLINE_ENCODER) else name
    except ImportError:
        return name


def provenance_from_signature(meta: dict, decoding: dict | None, engine: str, where: str) -> dict[str, Any]:
    """modelyard's provenance record for an llm-dna signature, from what its extractor recorded."""
    ec = meta.get("extractor_config") or {}
    recorded = ec.get("provenance") or {}
    need = {"pipeline_version": "pipeline", "encoder": "encoder", "probe_order_sha256": "ordered probe hash",
            "random_seed": "projection seed", "dna_dim": "dna_dim", "aggregation_method": "aggregation"}
    for key, what in need.items():
        if ec.get(key) is None:
            raise DnaImportError(f"{where}: {what} not recorded (metadata.extractor_config.{key}); only llm-dna "
                                 "text DNA with ordered probes can be compared")
    decoding = recorded.get("decoding") or decoding
    if decoding is None:
        raise DnaImportError(f"{where}: decoding not recorded (no generation_config in its provenance and no "
                             "responses.json beside it)")
    return {
        "pipeline": ec["pipeline_version"],
        "encoder": encoder_id(ec["encoder"]),
        "encoder_max_seq_length": recorded.get("encoder_max_seq_length"),
        "probe_sha256": ec["probe_order_sha256"],
        "projection_seed": ec["random_seed"],
        "dna_dim": ec["dna_dim"],
        "pre_agg_embed_dim": ec.get("pre_agg_embed_dim"),
        "normalize_embeddings": bool(ec.get("normalize_embeddings", False)),
        "aggregation": ec["aggregation_method"],
        "decoding": decoding,
        "engine": recorded.get("engine", engine),
        "engine_version": recorded.get("engine_version"),
        "llm_dna_version": recorded.get("llm_dna_version", "unknown"),
    }


# --- reading files -----------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    text = read_text(path, "file", DnaImportError)  # missing, unreadable, not UTF-8: one line
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DnaImportError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _responses_beside(path: Path, model: str, probe_sha256: str) -> dict | None:
    """calc-dna's responses.json in the signature's folder, when it answers the same probes."""
    beside = path.parent / "responses.json"
    if not beside.is_file():
        return None
    payload = _read_json(beside)
    items = payload.get("items") if isinstance(payload, dict) else None
    if payload.get("model") != model or not isinstance(items, list):
        return None
    if probes_sha256([i.get("prompt") for i in items if isinstance(i, dict)]) != probe_sha256:
        return None
    return payload


def read_signature(path: Path, engine: str, allow_pickle: bool = False) -> Incoming:
    from llm_dna.dna.DNASignature import DNASignature

    if path.suffix.lower() in (".npz", ".gz") and not allow_pickle:
        # llm-dna keeps an npz signature's metadata pickled: loading it runs code the file carries
        raise DnaImportError(f"{path}: an .npz signature holds pickled metadata, which runs code when loaded; "
                             "pass --allow-pickle for a file you trust, or save it as .json with llm-dna")
    if path.suffix.lower() == ".json":
        _read_json(path)  # a clear line for a missing or broken file before llm-dna's loader
    elif not path.is_file():
        raise DnaImportError(f"{path}: no such file")
    try:
        sig = DNASignature.load(path)
    except Exception as exc:  # noqa: BLE001 - llm-dna's loader raises anything on a foreign file
        raise DnaImportError(f"{path}: not an llm-dna DNA signature ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0][:200]})") from None
    meta = json.loads(json.dumps(sig.metadata.__dict__, default=str))
    ec = meta.get("extractor_config") or {}
    responses = _responses_beside(path, meta["model_name"], ec.get("probe_order_sha256") or "")
    decoding = decoding_from_responses(responses, str(path.parent / "responses.json")) if responses else None
    gc = (ec.get("provenance") or {}).get("generation_config") or (ec.get("provenance") or {}).get(
        "requested_generation_config")
    if decoding is None and isinstance(gc, dict):
        decoding = decoding_from_llm_dna(gc, str(path))
    prov = provenance_from_signature(meta, decoding, engine, str(path))
    return Incoming(path, "llm-dna signature", meta["model_name"], np.asarray(sig.signature, dtype=np.float32),
                    prov, meta, responses)


def read_responses(path: Path, payload: dict, cfg: DnaConfig, encoder, engine: str) -> Incoming:
    """Fingerprint an llm-dna responses.json with the config's encoder and projection."""
    from actors.fingerprint import ProbeSet, fingerprint, make_extractor, make_provenance
    from actors.gates import validate_responses

    items = payload.get("items")
    if not isinstance(items, list) or not items or any(not isinstance(i, dict) for i in items):
        raise DnaImportError(f"{path}: items: expected a list of {{\"prompt\", \"response\"}} objects")
    if payload.get("complete") is False:
        raise DnaImportError(f"{path}: complete: false (a partial response cache)")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise DnaImportError(f"{path}: model: missing")
    decoding = decoding_from_responses(payload, str(path))
    if decoding is None:
        raise DnaImportError(f"{path}: generation_config: missing (the decoding cannot be compared)")
    probes = [str(i.get("prompt", "")) for i in items]
    answers = ["" if i.get("response") is None else str(i["response"]) for i in items]
    stats = validate_responses(model, answers, cfg.gates)
    if not stats.ok:
        raise DnaImportError(f"{path}: {stats.reason}")
    dataset = str(payload.get("dataset") or path.parent.name)
    probe_set_id = dataset if dataset.endswith(f"_{len(probes)}") else f"{dataset}_{len(probes)}"
    probe_set = ProbeSet(probes, probe_set_id, probes_sha256(probes), source=str(path))
    prov = {**make_provenance(cfg, probe_set.sha256, cfg.encoder.name), "decoding": decoding,
            "engine": engine, "engine_version": None}
    vector, meta = fingerprint(answers, probe_set, make_extractor(cfg.dna, cfg.encoder.name), encoder,
                               model_id=model, provenance=prov)
    return Incoming(path, "responses", model, vector, prov, meta, payload)


def read_incoming(path: Path, cfg_of, encoder_of, engine: str, allow_pickle: bool = False) -> Incoming:
    """One file; `cfg_of()` / `encoder_of()` give the DNA config and encoder (loaded on first need)."""
    payload = _read_json(path) if path.suffix.lower() == ".json" else None
    if isinstance(payload, dict) and "items" in payload:
        inc = read_responses(path, payload, cfg_of(), encoder_of(), engine)
    elif isinstance(payload, dict) and "vector" in payload and "provenance" in payload and "signature" in payload:
        # modelyard's own dna.json, from a colleague's store
        inc = Incoming(path, "modelyard dna.json", str(payload.get("model_id")),
                       np.asarray(payload["vector"], dtype=np.float32), payload["provenance"], payload["signature"])
    elif path.suffix.lower() in (".json", ".npz", ".gz"):
        inc = read_signature(path, engine, allow_pickle)
    else:
        raise DnaImportError(f"{path}: unsupported file {path.suffix or '(none)'!r} (allowed: an llm-dna signature "
                             ".json/.npz, a responses.json)")
    v = inc.vector
    if v.ndim != 1 or not v.size or not np.all(np.isfinite(v)) or not np.any(v):
        raise DnaImportError(f"{path}: the DNA vector is not a finite, non-zero 1-D vector (shape {v.shape})")
    if v.shape[0] != inc.provenance.get("dna_dim"):
        raise DnaImportError(f"{path}: vector length {v.shape[0]} != dna_dim {inc.provenance.get('dna_dim')}")
    return inc


# --- the store ---------------------------------------------------------------------------------
def store_reference(store: ArtifactStore) -> tuple[str, dict] | None:
    """(model id, provenance) of the newest complete DNA run in the store; None when it has none."""
    newest: tuple[str, RunInfo] | None = None
    for safe in store.model_ids("dna"):
        art = store.latest("dna", safe, prefer=(".json",))
        if art is not None and "dna.json" in art.run.marker.get("files", []):
            if newest is None or art.run.name > newest[1].name:
                newest = (art.run.marker.get("model_id", safe), art.run)
    if newest is None:
        return None
    doc = store.get_json(f"{newest[1].prefix}/dna.json")
    return newest[0], doc.get("provenance") or {}


def check_importable(incoming: list[Incoming], reference: tuple[str, dict] | None, ignore: tuple[str, ...] = ()) -> None:
    """DnaImportError (one line naming the file and the differing fields) unless every file's DNA is
    comparable with the store's newest run (or, in an empty store, with the first file)."""
    if reference is None and incoming:
        reference = (incoming[0].model_id, incoming[0].provenance)
    for inc in incoming:
        ref_id = reference[0] if reference[0] != inc.model_id else f"{reference[0]} (store)"
        try:
            check_comparable({ref_id: reference[1], inc.model_id: inc.provenance}, ignore)
        except ProvenanceError as exc:
            raise DnaImportError(f"{inc.path}: {exc}") from None


def import_dna(store: ArtifactStore, paths: list[str], *, names: list[str] | None = None, cfg: DnaConfig | None = None,
               engine: str = "hf", ignore: tuple[str, ...] = (), allow_pickle: bool = False) -> list[RunInfo]:
    """Read every file, check all of them, then write one run per file (nothing is written when
    any file is refused). Returns the completed runs."""
    if names and len(names) != len(paths):
        raise DnaImportError(f"--name given {len(names)} time(s) for {len(paths)} file(s): one per file")
    cache: dict[str, Any] = {}

    def cfg_of() -> DnaConfig:
        return cfg or DnaConfig()

    def encoder_of():
        if "encoder" not in cache:
            from actors.fingerprint import load_encoder

            cache["encoder"] = load_encoder(cfg_of().encoder)
        return cache["encoder"]

    incoming = [read_incoming(Path(p).expanduser(), cfg_of, encoder_of, engine, allow_pickle) for p in paths]
    for inc, name in zip(incoming, names or [None] * len(incoming)):
        inc.model_id = name or inc.model_id
    ids = [inc.model_id for inc in incoming]
    if len(set(ids)) != len(ids):
        dup = next(m for m in ids if ids.count(m) > 1)
        raise DnaImportError(f"two files name model {dup!r}: give each a --name")
    check_importable(incoming, store_reference(store), ignore)
    runs = []
    for inc in incoming:
        run = store.new_run("dna", inc.model_id)
        signature = {**inc.signature, "model_name": inc.model_id}
        write_dna(run, inc.model_id, inc.vector, inc.provenance, signature,
                  imported={"from": str(inc.path), "kind": inc.kind, "original_model_name": inc.signature.get(
                      "model_name"), "llm_dna_version": metadata.version("llm-dna")})
        if inc.responses is not None:
            run.put_json("responses.json", inc.responses)
        runs.append(run.complete(status="ok", model_id=inc.model_id, outcome="ok", source="import",
                                 imported_from=str(inc.path)))
    return runs


def main(argv: list[str]) -> int:
    from cluster.config import load_config
    from cluster.store.storage import open_store

    parser = argparse.ArgumentParser(prog="yard dna import", description="bring llm-dna signatures and response "
                                     "caches into the store as DNA runs of their own")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="llm-dna signature (.json/.npz) or responses.json")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="DNA config: its store, and the encoder and "
                        "projection that fingerprint a responses.json (default configs/dna.demo.yaml)")
    parser.add_argument("--store", default=None, help="store URI (default: the config's storage.uri)")
    parser.add_argument("--name", action="append", default=None, help="model id for a file (once per PATH, in order)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="engine that generated an llm-dna file's answers when it does not say (llm-dna: hf)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load .npz signatures (their metadata is pickled: only for files you trust)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, DnaConfig)
    store = open_store(args.store or cfg.storage.uri, cfg.storage.endpoint_url)
    ignore = ("engine",) if cfg.analysis.compare_across_engines else ()
    runs = import_dna(store, args.paths, names=args.name, cfg=cfg, engine=args.engine, ignore=ignore,
                      allow_pickle=args.allow_pickle)
    for path, run in zip(args.paths, runs):
        print(f"imported {path} -> {store.locate(run.prefix)}")
    return 0

