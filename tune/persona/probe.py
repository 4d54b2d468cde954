"""The persona pipeline's probe step, one for the job and the sweep: the probe suite on a merged
model with and without the persona's system prompt, through `serve.probes.probes.run_probes`.

Two transports for the same suite, conditions and request parameters:
- `probe_served` (`yard persona`): the merged model, and its base with `probe.compare_base`, behind
  a Serve app on a free port, answered over HTTP; the judge as configured.
- `probe_in_process` (`yard sweep` of kind persona_sweep): each trial's merged model answers
  through an in-process `serve.engine_hf.HFEngine` behind `EngineClient`, a stand-in for the
  HTTP client that `run_probes` drives; rule checks only. Cheaper than a Serve app per trial: no
  replica competing with concurrent trials for CPUs/GPUs, no app names or ports to keep apart,
  no second copy of the model.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cluster.runtime import free_port
from cluster.store.storage import ArtifactStore
from tune.persona.config import PersonaConfig

log = logging.getLogger(__name__)


def _suite(cfg: PersonaConfig):
    from serve.probes.probe_suite import load_suite

    return load_suite(cfg.resolve_path(cfg.probe.suite))


def _params(cfg: PersonaConfig) -> dict:
    """The request parameters of every probe, whichever transport answers it."""
    return {"max_tokens": cfg.probe.max_tokens, "chat_template_kwargs": dict(cfg.chat_template_kwargs)}


def probe_served(cfg: PersonaConfig, store: ArtifactStore, model_path: str, registry_paths: list[str],
                 reporter=None) -> dict:
    """The probe suite on the merged model (variant "merged", the first candidate) and, with
    `probe.compare_base`, on its base (variant "base") behind one Serve app (a free port), each with
    and without the system prompt; the judge as configured (replay: deterministic fake ratings).
    run_probes' summary."""
    import ray

    from serve.config import CandidateConfig, ServeConfig
    from serve.deploy import shutdown, start_app
    from serve.judge.judge import JudgeEndpoint
    from serve.judge.replay import ReplayServer
    from serve.probes.probes import CONDITIONS, ProbeCandidate, make_judge, run_probes
    suite = _suite(cfg)
    res = cfg.resources.probe
    num_cpus, num_gpus = res.num_cpus, res.num_gpus
    have = ray.cluster_resources()
    if cfg.probe.compare_base and (2 * num_gpus > have.get("GPU", 0) or 2 * num_cpus > have.get("CPU", 0)):
        # two replicas on what one was given (check_resources saw room for one), not a Serve app that waits forever
        num_cpus, num_gpus = num_cpus / 2, num_gpus / 2
        log.info("probe: base and merged model share %g CPU(s) and %g GPU(s)", res.num_cpus, res.num_gpus)
    where = {"merged": {"path": model_path}, "base": {"model": cfg.base}}  # variant -> its weights
    served = {variant: CandidateConfig(id=f"{cfg.name}-{variant}", num_cpus=num_cpus, num_gpus=num_gpus,
                                       chat_template_kwargs=cfg.chat_template_kwargs, **where[variant])
              for variant in (["merged", "base"] if cfg.probe.compare_base else ["merged"])}
    scfg = ServeConfig(storage=cfg.storage, ray=cfg.ray, port=free_port(), probe_suite=None, registry=registry_paths,
                       candidates=list(served.values()))
    with contextlib.ExitStack() as stack:
        judge, judge_params = None, None
        if cfg.probe.judge is not None:
            jcfg = JudgeEndpoint.model_validate(cfg.probe.judge)
            judge_params = {"temperature": jcfg.temperature, "max_tokens": jcfg.max_tokens}
            if jcfg.replay:
                server = stack.enter_context(ReplayServer(default="judge", models=["replay-judge"]))
                log.warning("probe judge: replayed judgments (not a real judge model: its scores measure nothing)")
                judge = stack.enter_context(make_judge(jcfg, store, server.url, "replay-judge"))
            else:
                judge = stack.enter_context(make_judge(jcfg, store))
        url = start_app(scfg)
        stack.callback(shutdown)
        cands = [ProbeCandidate(id=c.id, base_url=f"{url}/v1", model=c.id, group=cfg.name, variant=variant,
                                params=_params(cfg)) for variant, c in served.items()]
        summary = run_probes(suite, cands, judge, store, conditions=CONDITIONS, judge_params=judge_params,
                             reporter=reporter)
    summary["judge_replayed"] = bool(cfg.probe.judge and cfg.probe.judge.get("replay"))
    return summary


@dataclass(frozen=True)
class _Reply:  # the fields of serve.client.ChatReply that run_probes reads
    text: str
    cached: bool = False
    attempts: int = 1
    finish_reason: str | None = None


class EngineClient:
    """A `ChatClient` stand-in answering from an in-process HFEngine: `chat_many` renders each
    conversation with the template options and generates them as one batch."""

    max_concurrency = 1

    def __init__(self, engine, model: str):
        self.engine, self.model = engine, model

    def chat_many(self, conversations: list[list[dict]], **params) -> list[_Reply]:
        from serve.engine_hf import GenRequest

        kwargs = params.get("chat_template_kwargs") or {}
        reqs = [GenRequest(prompt=self.engine.render_chat(c, kwargs), max_tokens=int(params.get("max_tokens", 64)),
                           temperature=float(params.get("temperature", 0.0))) for c in conversations]
        return [_Reply(r.text, finish_reason=r.finish_reason) for r in self.engine.generate(reqs)]

    def chat(self, messages: list[dict], **params) -> _Reply:
        return self.chat_many([messages], **params)[0]

    def close(self) -> None:
        pass


def probe_in_process(cfg: PersonaConfig, model_dir: str, out_dir: Path) -> dict:
    """Rule-checked probes of a merged model dir, both conditions, no server: run_probes' summary."""
    from serve.config import CandidateConfig
    from serve.engine_hf import HFEngine
    from serve.probes.probes import CONDITIONS, ProbeCandidate, run_probes

    cand_id = f"{cfg.name}-merged"
    engine = HFEngine(CandidateConfig(id=cand_id, path=model_dir, chat_template_kwargs=cfg.chat_template_kwargs))
    cand = ProbeCandidate(id=cand_id, base_url="http://in-process/v1", params=_params(cfg))
    return run_probes(_suite(cfg), [cand], None, None, conditions=CONDITIONS,
                      clients={cand_id: EngineClient(engine, cand_id)}, out_dir=out_dir)
