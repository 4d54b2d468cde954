"""The seeded toy model zoo: tiny Llama / Qwen3 / EXAONE 4 models built locally, with lineage.

Nothing can be downloaded in tests or demos, so modelyard trains its own small models through the
same code path users take for real ones: a byte-level BPE tokenizer and transformers' own model
classes, saved in standard HF format and registered in `<zoo_dir>/models.yaml` (a
`cluster.models.registry.ModelsFile`). Bases are trained from scratch, each on its own slice of the
bundled corpus; children derive from a parent (`continued` training, or a LoRA fine-tune merged
with `merge_and_unload`). Later stages add their own children with `register_child`.

Builds are deterministic for a seed and cached: `<zoo_dir>/zoo.lock.json` holds a hash of the
resolved config, the corpus and this code; a build with the same hash only rebuilds model dirs that
went missing. Every model is written to a temp dir and renamed into place when complete.

    >>> from cluster.models.zoo import build_zoo, default_zoo_config
    >>> build = build_zoo(default_zoo_config())          # doctest: +SKIP
    >>> build.cache_hit, build.models                     # doctest: +SKIP
    (False, ['llama-a', 'qwen3-b', 'exaone4-c', 'llama-a-continued', ...])
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from cluster.config import ConfigError, YardModel, format_validation_error, load_config
from cluster.models import zoo_train
from cluster.models.registry import ModelRegistry, ModelsFile, ModelSpec

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).parents[2] / "configs" / "zoo.demo.yaml"
REGISTRY_NAME = "models.yaml"
LOCK_NAME = "zoo.lock.json"
TOKENIZER_DIR = "_tokenizer"
_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# Files whose presence marks a finished model dir (a half-written one lives under a temp name).
_COMPLETE_MARKERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _check_topics(topics: list[str]) -> list[str]:
    known = zoo_train.corpus_topics()
    for topic in topics:
        if topic not in known:
            # The allowed values go in the message: config.py rewrites an `expected` ctx to "not allowed".
            raise PydanticCustomError("unknown_topic", "unknown corpus topic {topic} (allowed: {known})",
                                      {"topic": repr(topic), "known": ", ".join(known)})
    return topics


class TokenizerSpec(YardModel):
    """The zoo's shared byte-level BPE tokenizer."""

    vocab_size: int = Field(3000, ge=512, le=32000, description="BPE vocabulary incl. special tokens")
    min_frequency: int = Field(2, ge=1, description="a merge must occur this often in the corpus")


class BaseSpec(YardModel):
    """A base model trained from scratch on one slice of the corpus."""

    name: str = Field(pattern=_NAME_PATTERN)
    arch: Literal["llama", "qwen3", "exaone4"]
    seed: int = Field(0, ge=0, description="mixed with the zoo seed: init and data order")
    hidden_size: int = Field(96, ge=16, le=2048)
    num_layers: int = Field(6, ge=1, le=64, description="~6 leaves room for layer pruning")
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1, description="grouped-query attention")
    intermediate_size: int = Field(256, ge=16)
    sliding_window: int = Field(64, ge=8, description="exaone4 local-attention window, in tokens")
    corpus: list[str] = Field(min_length=1, description="corpus topics (cluster/models/zoo_corpus/<topic>.txt)")
    steps: int = Field(500, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, le=1, description="peak learning rate (warmup, cosine decay)")

    @field_validator("corpus")
    @classmethod
    def _known_topics(cls, v: list[str]) -> list[str]:
        return _check_topics(v)

    @model_validator(mode="after")
    def _heads(self) -> "BaseSpec":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class ChildSpec(YardModel):
    """A model derived from an earlier one (a base or another child)."""

    name: str = Field(pattern=_NAME_PATTERN)
    parent: str
    derivation: Literal["continued", "lora_merged"]
    seed: int = Field(0, ge=0)
    corpus: list[str] = Field(min_length=1, description="the slice the child is trained on")
    steps: int = Field(40, ge=1)
    lr: float = Field(3e-4, gt=0, le=1)
    lora_rank: int = Field(8, ge=1, le=256, description="lora_merged only")

    @field_validator("corpus")
    @classmethod
    def _known_topics(cls, v: list[str]) -> list[str]:
        return _check_topics(v)


class ZooConfig(YardModel):
    """`kind: zoo`: what the toy zoo contains and how it is trained."""

    kind: Literal["zoo"] = "zoo"
    zoo_dir: str = Field(".yard/zoo", validate_default=True, description="where models, models.yaml and zoo.lock.json go")
    seed: int = Field(0, ge=0, description="zoo-wide seed, mixed into every model's seed")
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    seq_len: int = Field(128, ge=16, le=512, description="training window, in tokens")
    batch_size: int = Field(8, ge=1)
    num_threads: int = Field(2, ge=1, description="models trained at once while building (one torch thread each)")
    bases: list[BaseSpec] = Field(min_length=1)
    children: list[ChildSpec] = Field(default_factory=list)

    @field_validator("zoo_dir")
    @classmethod
    def _durable(cls, v: str) -> str:
        from cluster.config import check_durable_path

        return check_durable_path(v, "zoo_dir")

    @model_validator(mode="after")
    def _lineage(self) -> "ZooConfig":
        # Raised as a ValidationError with the exact field path, so the one-line ConfigError
        # names e.g. `children.2.parent`, not the whole config.
        seen: dict[str, str] = {}
        errors: list[InitErrorDetails] = []
        for group, specs in (("bases", self.bases), ("children", self.children)):
            for i, spec in enumerate(specs):
                if group == "children" and spec.parent not in seen:
                    errors.append(InitErrorDetails(
                        type=PydanticCustomError("unknown_parent",
                                                 "unknown parent, not a base or an earlier child (allowed: {known})",
                                                 {"known": ", ".join(seen)}),
                        loc=(group, i, "parent"), input=spec.parent))
                if spec.name in seen:
                    errors.append(InitErrorDetails(
                        type=PydanticCustomError("duplicate_name", "duplicate model name, already used by {other}",
                                                 {"other": seen[spec.name]}),
                        loc=(group, i, "name"), input=spec.name))
                seen.setdefault(spec.name, f"{group}.{i}")
        if errors:
            raise ValidationError.from_exception_data("ZooConfig", errors)
        return self

    def specs(self) -> list[BaseSpec | ChildSpec]:
        """Every model in build order (bases, then children; parents come first)."""
        return [*self.bases, *self.children]


@dataclass
class ZooBuild:
    """What `build_zoo` produced."""

    zoo_dir: Path
    registry_path: Path
    models: list[str] = field(default_factory=list)  # registered ids; `list_zoo(zoo_dir)` has the details
    cache_hit: bool = False
    seconds: float = 0.0
    built: list[str] = field(default_factory=list)  # ids (re)trained by this call


def default_zoo_config(overrides: list[str] | tuple[str, ...] = ()) -> ZooConfig:
    """The demo zoo, `configs/zoo.demo.yaml` in the repository."""
    return load_config(DEMO_CONFIG, ZooConfig, overrides)


def zoo_hash(cfg: ZooConfig) -> str:
    """Cache key: resolved config (less where it is written and how many models train at once:
    each trains on one thread, so the weights do not depend on it), corpus, this code, library
    versions."""
    import torch
    import transformers

    h = hashlib.sha256()
    h.update(json.dumps(cfg.model_dump(mode="json", exclude={"zoo_dir", "num_threads"}), sort_keys=True).encode())
    h.update(zoo_train.corpus_digest().encode())
    for module_file in (__file__, zoo_train.__file__):
        h.update(Path(module_file).read_bytes())
    # Another torch/transformers may train or serialize differently: treat it as a new zoo.
    h.update(f"torch={torch.__version__} transformers={transformers.__version__}".encode())
    return h.hexdigest()


def zoo_cached(cfg: ZooConfig) -> bool:
    """Would `build_zoo(cfg)` be a cache hit now? (Reads the lock and the model dirs; trains nothing.)"""
    try:
        return _cache_state(Path(cfg.zoo_dir).expanduser(), cfg, zoo_hash(cfg))[3]
    except ConfigError:  # an unreadable registry: build_zoo would rebuild
        return False


def _cache_state(zoo_dir: Path, cfg: ZooConfig, key: str) -> tuple[bool, list[str], dict, bool]:
    """(same hash, models whose dirs are incomplete, registry, cache hit) of the zoo in `zoo_dir`."""
    try:
        same = json.loads((zoo_dir / LOCK_NAME).read_text())["hash"] == key
    except (OSError, ValueError, KeyError):
        same = False
    missing = [s.name for s in cfg.specs() if not _model_complete(zoo_dir / s.name)]
    registry = read_registry(zoo_dir) if same else {}
    return same, missing, registry, same and not missing and all(s.name in registry for s in cfg.specs())


def _model_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _COMPLETE_MARKERS)


@contextmanager
def _exclusive(zoo_dir: Path):
    """One writer per zoo dir (parallel test sessions, a CLI build next to a test run)."""
    zoo_dir.mkdir(parents=True, exist_ok=True)
    with open(zoo_dir / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp dir into place; an older version is moved aside first, then removed."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _staging(final: Path):
    """A temp dir next to `final`, renamed onto it only when the block completes."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, final)


def read_registry(zoo_dir: Path) -> dict[str, ModelSpec]:
    path = zoo_dir / REGISTRY_NAME
    if not path.is_file():
        return {}
    return dict(load_config(path, ModelsFile).models)


# Written for every entry, defaults included, so a reader of models.yaml sees the whole lineage.
_ENTRY_KEYS = ("source", "family", "params_b", "dtype", "load_in", "parent", "derivation", "lineage_family",
               "chat_template_kwargs", "notes")


def _entry_data(spec: ModelSpec) -> dict:
    full = spec.model_dump(mode="json")
    rest = spec.model_dump(mode="json", exclude_defaults=True)
    return {**{k: full[k] for k in _ENTRY_KEYS}, **{k: v for k, v in rest.items() if k not in _ENTRY_KEYS}}


def _write_registry(zoo_dir: Path, models: dict[str, ModelSpec]) -> Path:
    data = {"kind": "models", "models": {mid: _entry_data(spec) for mid, spec in models.items()}}
    ModelsFile.model_validate(data)  # never write a registry the loader would reject
    header = ("# Generated by cluster.models.zoo (yard zoo build); derived models are added with\n"
              "# cluster.models.zoo.register_child. Sources are relative to this file.\n")
    path = zoo_dir / REGISTRY_NAME
    _write_atomic(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _mixed_seed(cfg: ZooConfig, spec: BaseSpec | ChildSpec) -> int:
    return (cfg.seed * 1_000_003 + spec.seed) % 2**31


def _entry(cfg: ZooConfig, spec: BaseSpec | ChildSpec, params: int, loss: float, arch: str, family: str) -> ModelSpec:
    topics = "+".join(spec.corpus)
    if isinstance(spec, BaseSpec):
        notes = (f"toy {arch} base: {spec.num_layers} layers, hidden {spec.hidden_size}, "
                 f"seed {_mixed_seed(cfg, spec)}, {spec.steps} steps on {topics} (final loss {loss:.3f})")
        parent, derivation = None, "base"
    else:
        extra = f", LoRA rank {spec.lora_rank} merged" if spec.derivation == "lora_merged" else ""
        notes = (f"{spec.derivation} from {spec.parent}: {spec.steps} steps at lr {spec.lr:g} on {topics}{extra} "
                 f"(final loss {loss:.3f})")
        parent, derivation = spec.parent, spec.derivation
    return ModelSpec(source=f"./{spec.name}", family=arch, params_b=params / 1e9, dtype="fp32", load_in="bf16",
                     parent=parent, derivation=derivation, lineage_family=family,
                     chat_template_kwargs={"enable_thinking": False}, notes=notes)


def _load_tokenizer(zoo_dir: Path, cfg: ZooConfig, reuse: bool):
    from transformers import AutoTokenizer

    path = zoo_dir / TOKENIZER_DIR
    if reuse and (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    started = time.monotonic()
    tokenizer = zoo_train.train_tokenizer(zoo_train.read_corpus(), cfg.tokenizer.vocab_size,
                                          cfg.tokenizer.min_frequency)
    with _staging(path) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("trained tokenizer: %d tokens in %.1fs", len(tokenizer), time.monotonic() - started)
    return tokenizer


def build_zoo(cfg: ZooConfig) -> ZooBuild:
    """Build (or reuse) the zoo `cfg` describes; returns its registry and what was trained.

    Same hash and every model dir complete: a cache hit, nothing is trained. Same hash with some
    dirs missing: only those are rebuilt (deterministically, so siblings stay consistent). A new
    hash: everything is rebuilt and models registered later with `register_child` are dropped.
    """
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    # Absolute, so the registry path still works from a Ray worker with another cwd.
    zoo_dir = Path(cfg.zoo_dir).expanduser().resolve()
    with _exclusive(zoo_dir):
        key = zoo_hash(cfg)
        lock_path = zoo_dir / LOCK_NAME
        same, missing, registry, hit = _cache_state(zoo_dir, cfg, key)
        if hit:
            seconds = time.monotonic() - started
            log.info("zoo %s: cache hit (%d models, %.2fs)", zoo_dir, len(registry), seconds)
            return ZooBuild(zoo_dir, zoo_dir / REGISTRY_NAME, list(registry), True, seconds)

        if not same:
            # The old lock must not vouch for a half-rebuilt zoo if this run dies.
            lock_path.unlink(missing_ok=True)
            dropped = sorted(set(_safe_registry(zoo_dir)) - {s.name for s in cfg.specs()})
            if dropped:
                log.warning("zoo config, corpus or code changed: dropping registered models %s", ", ".join(dropped))
            todo = [s.name for s in cfg.specs()]
        else:
            todo = [s.name for s in cfg.specs() if s.name in missing or s.name not in registry]
        log.info("building zoo %s: %d of %d models", zoo_dir, len(todo), len(cfg.specs()))

        # Our own per-model progress says more than transformers' per-file load/save bars.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            _load_tokenizer(zoo_dir, cfg, reuse=same)
            # (architecture, lineage family) of every model: a child inherits both from its parent.
            lineage = {b.name: (b.arch, b.name) for b in cfg.bases}
            for spec in cfg.children:
                lineage[spec.name] = lineage[spec.parent]
            specs = [s for s in cfg.specs() if s.name in todo]
            # Children start from the parent as saved, and every model trains on one thread, so
            # rebuilding one child alone gives the same weights as a full build.
            trained = zoo_train.train_models(
                specs, zoo_dir=zoo_dir, tokenizer_dir=zoo_dir / TOKENIZER_DIR, workers=min(cfg.num_threads, len(specs)),
                seed_of=lambda spec: _mixed_seed(cfg, spec), batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                install=_replace_dir)
            for spec in specs:
                registry[spec.name] = _entry(cfg, spec, *trained[spec.name], *lineage[spec.name])
        finally:
            if bars:
                hf_logging.enable_progress_bar()

        # Config models first, in build order; models registered later keep their place after them.
        ordered = {s.name: registry[s.name] for s in cfg.specs()}
        ordered.update({mid: spec for mid, spec in registry.items() if mid not in ordered})
        registry_path = _write_registry(zoo_dir, ordered)
        seconds = time.monotonic() - started
        _write_atomic(lock_path, json.dumps({"hash": key, "models": [s.name for s in cfg.specs()],
                                             "built": todo, "seconds": round(seconds, 2)}, indent=2))
        log.info("zoo %s: built %d models in %.1fs", zoo_dir, len(todo), seconds)
        return ZooBuild(zoo_dir, registry_path, list(ordered), False, seconds, todo)


def _safe_registry(zoo_dir: Path) -> dict[str, ModelSpec]:
    try:
        return read_registry(zoo_dir)
    except ConfigError:
        return {}


def register_child(zoo_dir: str | Path, model_id: str, path: str | Path, parent: str, derivation: str, *,
                   notes: str = "", params_b: float | None = None, load_in: str = "bf16", dtype: str = "fp32",
                   replace: bool = False) -> ModelSpec:
    """Add a model derived from a zoo model (pruned, distilled, quantized, persona...) to the
    zoo's `models.yaml`, with its lineage (parent, derivation, the parent's family).

    `path` is an HF model dir; inside the zoo dir it is registered relative (`./name`), elsewhere
    absolute. The architecture comes from its `config.json`, the parameter count from its
    safetensors unless `params_b` is given. Raises ConfigError on an unknown parent, an id already
    registered (unless `replace`), or a path that is not a model dir.
    """
    zoo_dir = Path(zoo_dir).expanduser().resolve()
    path = Path(path).expanduser().resolve()
    with _exclusive(zoo_dir):
        models = read_registry(zoo_dir)
        if not models:
            raise ConfigError(f"{zoo_dir}: no zoo here ({REGISTRY_NAME} missing; run `yard zoo build`)")
        if parent not in models:
            raise ConfigError(f"register_child {model_id}: parent: {parent!r}: unknown model "
                              f"(allowed: {', '.join(models)})")
        if model_id in models and not replace:
            raise ConfigError(f"register_child {model_id}: already registered in {zoo_dir / REGISTRY_NAME}")
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type", "other")
        except (OSError, ValueError):
            raise ConfigError(f"register_child {model_id}: {path}: not a model dir (no readable config.json)") from None
        if params_b is None:
            params_b = zoo_train.count_saved_params(path) / 1e9
        source = f"./{path.relative_to(zoo_dir)}" if path.is_relative_to(zoo_dir) else str(path)
        parent_spec = models[parent]
        data = dict(source=source, family=model_type if model_type in zoo_train.ARCHITECTURES else "other",
                    params_b=params_b, dtype=dtype, load_in=load_in, parent=parent, derivation=derivation,
                    lineage_family=parent_spec.lineage_family or parent,
                    chat_template_kwargs=dict(parent_spec.chat_template_kwargs), notes=notes)
        try:
            spec = ModelSpec.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(f"register_child {model_id}", exc)) from None
        models[model_id] = spec
        _write_registry(zoo_dir, models)
    log.info("registered %s (%s of %s) in %s", model_id, derivation, parent, zoo_dir / REGISTRY_NAME)
    return spec


def unregister(zoo_dir: str | Path, model_ids: list[str]) -> dict[str, str]:
    """Remove `model_ids` (models added with `register_child`) from the zoo's `models.yaml`; their
    model dirs stay. Returns {id: notes} of what was removed (ids not registered are skipped)."""
    zoo_dir = Path(zoo_dir).expanduser().resolve()
    with _exclusive(zoo_dir):
        models = read_registry(zoo_dir)
        gone = {mid: models.pop(mid).notes for mid in model_ids if mid in models}
        if gone:
            _write_registry(zoo_dir, models)
            log.info("unregistered %s from %s", ", ".join(gone), zoo_dir / REGISTRY_NAME)
    return gone


def zoo_dir_of(model_id: str, registry_paths: list[str]) -> Path | None:
    """The zoo directory whose models.yaml registers `model_id` (None: not a zoo model), where
    derived models of it are registered with `register_child`."""
    for path in registry_paths:
        p = Path(path)
        if p.name == REGISTRY_NAME and model_id in ModelRegistry.load([p]).ids():
            return p.parent
    return None
