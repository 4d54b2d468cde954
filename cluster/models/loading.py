"""The one place that decides how a model is loaded: quantization x device_map x dtype.

The decision is explicit, from the registry entry and the node's facts, never from model size
(the users lost money to a library that silently switched >=7B models to 8-bit). Impossible loads
(compute capability too low, 4/8-bit without CUDA, too few GPUs, not enough memory) are rejected
by `decide_load` with a `LoadError` before any weight is read.

    >>> plan = decide_load("llama-a", registry.get("llama-a"), node_facts())   # doctest: +SKIP
    >>> model, tok, plan = load_model("llama-a", registry)                     # doctest: +SKIP
"""
from __future__ import annotations

import gc
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.config import UserError
from cluster.models.registry import ModelRegistry, ModelSpec
from cluster.node import NodeFacts, node_facts

log = logging.getLogger(__name__)

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.5}
# Weights x this factor: CUDA context, activations and KV cache of a modest batch.
MEMORY_OVERHEAD = 1.25


class LoadError(UserError, RuntimeError):
    """A model that cannot be loaded here, phrased as one line naming the model."""


@dataclass(frozen=True)
class LoadPlan:
    model_id: str
    source: str
    source_kind: str
    revision: str | None
    dtype: str  # torch dtype name used for compute: float32 / bfloat16 / float16
    device_map: str | dict | None  # None = plain CPU load
    quantization: str  # none / 8bit / 4bit
    trust_remote_code: bool
    expected_mem_gib: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


def expected_memory_gib(spec: ModelSpec) -> float:
    return round(spec.params_b * 1e9 * BYTES_PER_PARAM[spec.load_in] * MEMORY_OVERHEAD / 2**30, 2)


def decide_load(model_id: str, spec: ModelSpec, node: NodeFacts) -> LoadPlan:
    """The explicit load decision for `spec` on `node`; LoadError when it cannot run there."""
    reasons: list[str] = []
    mem = expected_memory_gib(spec)
    quant = spec.load_in if spec.load_in in ("8bit", "4bit") else "none"

    if spec.min_cuda_capability is not None:
        if not node.cuda:
            raise LoadError(
                f"model {model_id}: needs a CUDA GPU with compute capability >= {spec.min_cuda_capability}; "
                f"{node.hostname} has no GPU"
            )
        if node.max_capability < spec.min_cuda_capability:
            raise LoadError(
                f"model {model_id}: needs compute capability >= {spec.min_cuda_capability}; "
                f"{node.hostname} has {', '.join(f'{n} (cc {c})' for n, c in zip(node.gpu_names, node.cuda_capabilities))}"
            )
    if quant != "none" and not node.cuda:
        raise LoadError(
            f"model {model_id}: load_in {spec.load_in} needs a CUDA GPU (bitsandbytes); "
            f"{node.hostname} has none (use load_in bf16/fp32 or a GPU node)"
        )

    if node.cuda:
        if spec.num_gpus > node.gpu_count:
            raise LoadError(f"model {model_id}: needs {spec.num_gpus} GPUs; {node.hostname} has {node.gpu_count}")
        available = sum(sorted(node.gpu_mem_gib, reverse=True)[: spec.num_gpus])
        where = f"{spec.num_gpus} GPU(s)"
        dtype = {"fp32": "float32", "fp16": "float16"}.get(spec.load_in, "bfloat16")
        if spec.num_gpus > 1:
            device_map: str | dict | None = "auto"
            reasons.append(f"num_gpus={spec.num_gpus}: device_map='auto' shards layers over the GPUs")
        else:
            device_map = {"": 0}
            reasons.append("one GPU: the whole model on the first visible device")
        if quant == "8bit" and spec.num_gpus > 1:
            # bitsandbytes refuses CPU offload; several GPUs are fine, offload is not.
            reasons.append("8bit over several GPUs: no CPU offload")
    else:
        available = node.cpu_mem_gib
        where = "CPU RAM"
        device_map = None
        # fp16/bf16 matmuls are slow or missing on many CPUs: compute in fp32 there.
        dtype = "float32"
        if spec.load_in != "fp32":
            reasons.append(f"CPU node: load_in {spec.load_in} computed as float32")
    if available and mem > available:
        raise LoadError(
            f"model {model_id}: needs ~{mem:.1f} GiB ({spec.params_b}B params as {spec.load_in}); "
            f"{node.hostname} has {available:.1f} GiB of {where}"
        )
    if quant != "none":
        reasons.append(f"load_in {spec.load_in}: bitsandbytes quantization, as the registry says")
    return LoadPlan(
        model_id=model_id,
        source=spec.source,
        source_kind=spec.source_kind,
        revision=spec.revision,
        dtype=dtype,
        device_map=device_map,
        quantization=quant,
        trust_remote_code=spec.trust_remote_code,
        expected_mem_gib=mem,
        reasons=tuple(reasons),
    )


def hf_cache_dir() -> Path:
    """Where downloaded weights go: YARD_HF_CACHE (point it at the node's large disk), else HF_HOME."""
    root = os.environ.get("YARD_HF_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(root).expanduser()


def resolve_source(plan: LoadPlan) -> str:
    """A path or HF id `from_pretrained` can read. s3:// sources are downloaded once into the
    cache (a `.complete` file marks a finished download)."""
    if plan.source_kind == "local":
        path = Path(plan.source).expanduser()
        if not path.exists():
            raise LoadError(f"model {plan.model_id}: local path {path} does not exist")
        return str(path)
    if plan.source_kind == "hf":
        return plan.source
    from cluster.store.storage import open_store

    bucket_and_prefix = plan.source[len("s3://"):].rstrip("/")
    bucket, _, prefix = bucket_and_prefix.partition("/")
    target = hf_cache_dir() / "s3" / bucket_and_prefix
    if (target / ".complete").exists():
        return str(target)
    store = open_store(f"s3://{bucket}")
    keys = [k for k in store.list_keys(prefix + "/") if not k.endswith("/")]
    if not keys:
        raise LoadError(f"model {plan.model_id}: nothing under {plan.source}")
    for key in keys:
        store.download(key, target / key[len(prefix) + 1:])
    (target / ".complete").write_text("ok")
    return str(target)


class CheckpointMismatch(UserError, RuntimeError):
    """A checkpoint whose files cannot hold the model its config describes (`check_checkpoint`). An
    error the host retries once (a copy may still be arriving), then skips as the same error twice."""


_META_SHAPES: dict[str, dict[str, list[int]]] = {}  # config.json's text -> its model's shapes


def check_checkpoint(model_id: str, path: str) -> None:
    """What a local checkpoint's own headers say, before an engine starts on it (a vLLM start costs
    30-100 s on a GPU, and a start that fails also ends the warm engine before it): every shard the
    index names is there, every safetensors file holds the bytes its header promises, and each tensor
    the config's model also names has that model's shape. Reads headers only and builds the model on
    the meta device (0.3-0.6 s on this project's 2-core VM for the 1.2-8B shapes, once per
    config.json). Leaves alone what it cannot judge: a hub id, no safetensors, a quantized
    checkpoint (packed shapes), an architecture transformers does not build, names not in common
    (a layout the engine converts)."""
    folder = Path(path)
    if not folder.is_dir():
        return
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointMismatch(f"model {model_id}: {index}: unreadable ({type(exc).__name__}: {exc})") from exc
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise CheckpointMismatch(f"model {model_id}: {path}: {len(missing)} of {len(shards)} shards missing "
                                     f"(first: {missing[0]})")
    found: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(_safetensors_shapes(model_id, file))
    config = folder / "config.json"
    if not found or not config.is_file():
        return
    text = config.read_text()
    if json.loads(text).get("quantization_config"):
        return
    if text not in _META_SHAPES:  # same-shape models share it: a weight swap pays no second build
        if len(_META_SHAPES) >= 8:
            _META_SHAPES.clear()
        _META_SHAPES[text] = _meta_shapes(folder)
    expected = _META_SHAPES[text]
    bad = sorted(name for name in set(found) & set(expected) if found[name] != expected[name])
    if bad:
        raise CheckpointMismatch(
            f"model {model_id}: {path}: {len(bad)} tensor(s) do not match config.json, e.g. {bad[0]}: "
            f"{found[bad[0]]} in the weights, {expected[bad[0]]} by the config")


def _safetensors_shapes(model_id: str, file: Path) -> dict[str, list[int]]:
    """A safetensors file's tensor shapes from its header; CheckpointMismatch when it is cut short."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or length > size - 8:
            raise CheckpointMismatch(f"model {model_id}: {file}: truncated ({size:,} bytes, no whole header)")
        try:
            tensors = {k: v for k, v in json.loads(fh.read(length)).items() if k != "__metadata__"}
            needed = 8 + length + max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
            shapes = {k: list(v["shape"]) for k, v in tensors.items()}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointMismatch(f"model {model_id}: {file}: unreadable header "
                                     f"({type(exc).__name__}: {exc})") from exc
    if needed > size:
        raise CheckpointMismatch(f"model {model_id}: {file}: truncated ({size:,} of {needed:,} bytes)")
    return shapes


def _meta_shapes(folder: Path) -> dict[str, list[int]]:
    """The parameter shapes of the model config.json describes, built on the meta device (no memory);
    empty when transformers cannot build it here (then the engine judges)."""
    import torch
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:  # noqa: BLE001 - remote code, an architecture this transformers lacks, ...
        log.debug("check_checkpoint: cannot build %s on meta: %s", folder, exc)
        return {}
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _quantization_config(plan: LoadPlan):
    if plan.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if plan.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
    )


def load_tokenizer(plan: LoadPlan, path: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        path or resolve_source(plan), revision=plan.revision, trust_remote_code=plan.trust_remote_code
    )
    tok.padding_side = "left"  # batched generation continues from the right edge
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def skip_unused_sklearn() -> None:
    """Start a model process 1.7 CPU-s sooner: transformers' generation code imports scikit-learn's
    metrics (and with them scipy.stats and pandas) when sklearn is installed, for one heuristic of
    assisted generation that no modelyard job uses; llm-dna installs sklearn. Its loss module
    imports scipy.optimize (with numpy.f2py: 0.3-0.5 CPU-s) for object-detection losses when scipy
    is installed. Called before the first model class is imported, it tells transformers both are
    absent (modelyard's own code imports scipy where it needs it, unaffected). Once that code has
    loaded, or in a transformers without the checks, it does nothing."""
    import sys

    if "transformers.generation.candidate_generator" in sys.modules:
        return
    import transformers.utils as hf_utils
    import transformers.utils.import_utils as hf_import_utils

    for module in (hf_utils, hf_import_utils):
        for check in ("is_sklearn_available", "is_scipy_available"):
            if hasattr(module, check):
                setattr(module, check, lambda: False)


def import_sentence_transformers():
    """`import sentence_transformers`, 1.1-1.4 CPU-s sooner in a process without scikit-learn loaded.

    Its similarity module imports `sklearn.metrics.pairwise_distances` at import, for one sparse
    manhattan score that llm-dna's encoding never calls; that import is all of sklearn (and
    scipy.stats). Here sklearn is a placeholder while sentence_transformers imports, and the name it
    binds imports the real function on first call. The placeholder is gone once the import returns:
    any later `import sklearn` in the process gets the real package. torch's dynamo, which records
    where sklearn lives when it is first imported, is imported before the placeholder."""
    import importlib.machinery
    import sys
    import types

    if "sentence_transformers" in sys.modules or "sklearn" in sys.modules:
        import sentence_transformers

        return sentence_transformers
    skip_unused_sklearn()
    import torch._dynamo  # noqa: F401  (records sklearn's real path in its skip list)

    def pairwise_distances(*args, **kwargs):
        from sklearn.metrics import pairwise_distances as real

        return real(*args, **kwargs)

    stubs = {}
    for name in ("sklearn", "sklearn.metrics"):
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        stub.__path__ = []
        stubs[name] = stub
    stubs["sklearn.metrics"].pairwise_distances = pairwise_distances
    stubs["sklearn"].metrics = stubs["sklearn.metrics"]
    sys.modules.update(stubs)
    try:
        import sentence_transformers
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]
    return sentence_transformers


def load_model(model_id: str, registry: ModelRegistry, node: NodeFacts | None = None):
    """Decide, then load: returns (model, tokenizer, plan). Rejections happen before any read."""
    import torch

    skip_unused_sklearn()
    from transformers import AutoModelForCausalLM

    spec = registry.get(model_id)
    plan = decide_load(model_id, spec, node or node_facts())
    path = resolve_source(plan)
    kwargs = dict(
        dtype=getattr(torch, plan.dtype),
        revision=plan.revision,
        trust_remote_code=plan.trust_remote_code,
        cache_dir=str(hf_cache_dir() / "hub") if plan.source_kind == "hf" else None,
    )
    if plan.device_map is not None:
        kwargs["device_map"] = plan.device_map
    qcfg = _quantization_config(plan)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise LoadError(f"model {model_id}: cannot load from {plan.source}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, load_tokenizer(plan, path), plan


def chat_prompt(tokenizer, messages: list[dict], spec: ModelSpec, model_id: str, **template_kwargs) -> str:
    """Render a chat with the model's template and the registry's template options
    (e.g. enable_thinking: false); per-call kwargs override the registry's."""
    if not getattr(tokenizer, "chat_template", None):
        raise LoadError(f"model {model_id}: tokenizer has no chat template (set one or use raw prompts)")
    kwargs = {**spec.chat_template_kwargs, **template_kwargs}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def release_memory() -> None:
    """After the caller dropped its references to a model: collect it and return cached GPU
    memory, so `torch.cuda.memory_allocated` goes back to its baseline."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
