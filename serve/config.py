"""The `kind: serve` config: which candidates the OpenAI-compatible app serves, and how.

    kind: serve
    zoo: configs/zoo.demo.yaml    # build or reuse the toy zoo; its models join the registry
    registry: []
    api_key: null                 # YARD_API_KEY wins when set
    limits: {max_prompt_tokens: 2048, max_tokens: 512}
    candidates:
      - {id: llama-a, model: llama-a}                               # a registry id, HF engine
      - {id: winner, path: sweep/prune-kd/.../trial-3, engine: hf}  # an HF dir or store prefix
      - {id: exaone, model: exaone-4.0-1.2b, engine: vllm, num_gpus: 1,
         autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}}

One config, both engines, one ingress at `/`: HF candidates (serve.engine_hf) and vLLM ones
(serve.engine_vllm, vLLM's AsyncLLM in the replica) answer behind the same key, limits and checks.
A vLLM candidate with `vllm_server: ray-serve-llm` is served by Ray Serve LLM's `build_openai_app`
instead, at `/` when every candidate is one and at `/vllm` next to the ingress otherwise
(serve.deploy.start_app).
"""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from cluster.config import JobConfig, YardModel

API_KEY_ENV = "YARD_API_KEY"
# Served model ids appear in URLs and "<id>:<adapter>" names: keep them to a plain alphabet.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_ADAPTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LimitsConfig(YardModel):
    """Per-request limits; a request over one is answered 400 (413 for the body), never run."""

    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_tokens: int = Field(default=512, ge=1, description="the largest max_tokens a request may ask for")
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_concurrent_requests: int = Field(default=64, ge=1, description="in flight at the ingress; more queue")
    max_json_depth: int = Field(default=32, ge=4, le=512, description="nesting a request body may have")
    chat_template_kwargs: list[str] = Field(
        default_factory=lambda: ["enable_thinking"],
        description="template options a request may set (chat_template_kwargs); anything else is 400: a request "
        "must never bring its own Jinja (chat_template) or reach options the server did not offer")


class AutoscalingConfig(YardModel):
    """Ray Serve autoscaling of one candidate's replicas."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self


class CandidateConfig(YardModel):
    """One served model: its OpenAI model id, where its weights come from, its engine and resources."""

    id: str = Field(description="the served model name clients pass as `model`")
    model: str | None = Field(default=None, description="a registry id (cluster.models.registry)")
    path: str | None = Field(default=None, description="an HF model dir, s3:// dir, or a store prefix holding model/")
    engine: Literal["hf", "vllm"] = "hf"
    vllm_server: Literal["yard", "ray-serve-llm"] = Field(default="yard", description="vllm engine: behind this "
                                                          "app's own ingress (the same key, limits, checks and "
                                                          "routes as hf), or Ray Serve LLM's OpenAI app (its own "
                                                          "ingress, which checks no API key)")
    num_replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_batch_size: int = Field(default=8, ge=1, description="HF engine: requests generated together")
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=10)
    lora_adapters: dict[str, str] = Field(default_factory=dict, description="name -> adapter dir; id '<id>:<name>'")
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)
    # vLLM engine only (ignored by the HF engine).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    accelerator_type: str | None = Field(default=None, description="Ray accelerator type, e.g. H100, A100, L4")
    engine_kwargs: dict = Field(default_factory=dict, description="extra vLLM engine kwargs (win over derived ones)")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v) or ":" in v:
            raise ValueError("ids use letters, digits and . _ / - (':' separates LoRA adapters)")
        return v

    @field_validator("lora_adapters")
    @classmethod
    def _adapters(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ADAPTER.match(name):
                raise ValueError(f"adapter name {name!r}: use letters, digits and . _ -")
        return v

    @model_validator(mode="after")
    def _source(self):
        if (self.model is None) == (self.path is None):
            raise ValueError("give exactly one of model (a registry id) or path (a model dir / store prefix)")
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self

    @property
    def on_serve_llm(self) -> bool:
        """Served by Ray Serve LLM's own app (`vllm_server: ray-serve-llm`), not this app's ingress."""
        return self.engine == "vllm" and self.vllm_server == "ray-serve-llm"

    def served_ids(self) -> list[str]:
        """The model ids this candidate answers to: its own, then '<id>:<adapter>' per LoRA adapter."""
        return [self.id] + [f"{self.id}:{name}" for name in self.lora_adapters]


class ServeConfig(JobConfig):
    """`yard serve CONFIG`: candidates behind one OpenAI-compatible HTTP API on Ray Serve."""

    kind: Literal["serve"] = "serve"
    registry: list[str] = Field(default_factory=list, description="model registry files (kind: models)")
    # Loopback unless configured otherwise: the API runs models for whoever reaches it.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = Field(default=None, description=f"bearer key; {API_KEY_ENV} wins when set")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    candidates: list[CandidateConfig] = Field(min_length=1)
    allow_public_without_key: bool = Field(default=False, description="listen on a non-loopback host (e.g. "
                                           "0.0.0.0) without api_key: anyone who reaches the port runs the models")
    allow_unauthenticated_vllm: bool = Field(default=False, description="serve vLLM candidates although api_key "
                                             "is set (Ray Serve LLM's ingress does not check it)")
    probe_suite: str | None = Field(default="configs/probes.persona.yaml",
                                    description="persona probe suite behind POST /v1/yard/probe (null: no route)")
    ray_serve_mode: Literal["auto", "direct", "throughput", "default"] = Field(
        default="auto", description="Ray Serve's request path where `yard serve` starts Ray itself: "
        "'direct' (Ray's throughput mode with its direct ingress: HAProxy on the port hands requests to the "
        "ingress replicas' own HTTP servers, no proxy actor on the path; needs an haproxy binary), "
        "'throughput' (Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED: user code on the replica's own event loop, gRPC "
        "between proxy and replicas, buffered access logs; the proxy actor stays on the path), "
        "'auto' (direct where an HAProxy binary is found, else throughput) or Ray's 'default'; "
        "a cluster reached by address keeps what its `ray start` was given")
    ingress: Literal["auto", "separate", "colocated"] = Field(
        default="auto", description="where the candidate's engine runs: 'colocated' in the ingress's own replica "
        "(one Ray hop a request, as vLLM's own server has none; needs exactly one candidate behind the ingress, "
        "whose num_cpus, num_gpus and replicas the ingress takes), 'separate' in a replica of its own (a hop "
        "from the ingress to it), 'auto' colocated for a single vLLM candidate (its engine core is a process of "
        "its own, so the replica's event loop stays free for HTTP) and separate otherwise")

    @field_validator("ingress")
    @classmethod
    def _one_to_colocate(cls, v: str, info: ValidationInfo) -> str:
        if v != "colocated" or "candidates" not in info.data:  # bad candidates are reported by themselves
            return v
        ours = [c for c in info.data["candidates"] if not c.on_serve_llm]
        if len(ours) != 1:
            raise ValueError(f"puts one candidate's engine in the ingress replica; {len(ours)} candidates are "
                             "served behind the ingress")
        return v

    def behind_ingress(self) -> list[CandidateConfig]:
        """The candidates this app's ingress serves (not Ray Serve LLM's)."""
        return [c for c in self.candidates if not c.on_serve_llm]

    def colocated(self) -> CandidateConfig | None:
        """The candidate whose engine runs in the ingress replica (`ingress`), or None."""
        ours = self.behind_ingress()
        if self.ingress == "separate" or len(ours) != 1:
            return None
        return ours[0] if self.ingress == "colocated" or ours[0].engine == "vllm" else None

    @model_validator(mode="after")
    def _unique(self):
        seen: set[str] = set()
        for cand in self.candidates:
            for sid in cand.served_ids():
                if sid in seen:
                    raise ValueError(f"candidate id {sid!r} is served twice (ids must be unique)")
                seen.add(sid)
        return self

    def resolved_api_key(self) -> str | None:
        """The key requests must bear: YARD_API_KEY when set (non-empty), else the config's."""
        return os.environ.get(API_KEY_ENV) or self.api_key

    def registry_paths(self) -> list[str]:
        """The registry files plus the zoo's registry when `zoo` names a zoo config (built, or reused
        from its cache, first); empty when neither is set (path-only candidates need none)."""
        if not self.zoo and not self.registry:
            return []
        return super().registry_paths()
