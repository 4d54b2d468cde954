"""`yard demo`'s Serve step: serve two zoo candidates, judge them on the shipped KoMT-style sample
questions, run the persona probe suite against them, print where the reports are.

The judge is the replay judge (deterministic ratings over real HTTP) unless `YARD_JUDGE_URL` and
`YARD_JUDGE_MODEL` name a real OpenAI-compatible one (key from the variable `YARD_JUDGE_KEY_ENV`
names, default OPENAI_API_KEY): a real judge model cannot run on a CPU machine.
"""
from __future__ import annotations

import logging
import os

from cluster.config import ConfigError, load_config
from cluster.ops.jobs import REPO_ROOT
from cluster.runtime import free_port

log = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "serve.demo.yaml"


def _judge():
    """The judge the environment names (replay when it names none); a bad setting is one line."""
    from pydantic import ValidationError

    from serve.judge.judge import JudgeEndpoint

    url, model = os.environ.get("YARD_JUDGE_URL"), os.environ.get("YARD_JUDGE_MODEL")
    if not (url and model):
        return JudgeEndpoint(replay=True)
    try:
        return JudgeEndpoint(base_url=url, model=model, api_key_env=os.environ.get("YARD_JUDGE_KEY_ENV", "OPENAI_API_KEY"))
    except ValidationError as exc:
        err = exc.errors()[0]
        env = {"base_url": "YARD_JUDGE_URL", "model": "YARD_JUDGE_MODEL", "api_key_env": "YARD_JUDGE_KEY_ENV"}
        where = env.get(str(err["loc"][0]) if err["loc"] else "", "YARD_JUDGE_*")
        raise ConfigError(f"{where}: {err['msg']}") from None


def demo(store, zoo_registry: str, quick: bool = True) -> dict:
    """Serve -> judge -> probes on the zoo `yard demo` built; Serve is shut down afterwards. `quick` is
    ignored: the toy models have 512 positions, so the judge and probes always run their short form."""
    from serve.config import ServeConfig
    from serve.deploy import shutdown, start_app
    from serve.judge.judge import demo_judge
    from serve.probes.probes import demo_probes

    overrides = ["zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={store.uri}", f"port={free_port()}"]
    cfg = load_config(DEMO_CONFIG, ServeConfig, overrides)
    ids = [c.id for c in cfg.candidates]
    judge = _judge()  # a bad judge setting is refused before Serve starts
    url = start_app(cfg)
    print(f"serve: {', '.join(ids)} at {url}/v1 (OpenAI-compatible)")
    key_env, old_key = None, os.environ.get("YARD_DEMO_API_KEY")
    try:
        if cfg.resolved_api_key():  # this app's key, never one left by an earlier call
            os.environ["YARD_DEMO_API_KEY"] = cfg.resolved_api_key()
            key_env = "YARD_DEMO_API_KEY"
        # quick either way: the toy models have 512 positions, too few for full-length answers
        judged = demo_judge(store, f"{url}/v1", ids, api_key_env=key_env, judge=judge, quick=True)
        probed = demo_probes(store, f"{url}/v1", ids, api_key_env=key_env, judge=judge, quick=True)
    finally:
        shutdown()
        if old_key is None:
            os.environ.pop("YARD_DEMO_API_KEY", None)
        else:
            os.environ["YARD_DEMO_API_KEY"] = old_key
    print(f"judge ({'replayed' if judge.replay else judge.model}): {judged.get('report')}")
    print(f"probes: {probed.get('report')}")
    ok = judged["status"] == "ok" and probed["status"] == "ok"
    return {"status": "ok" if ok else "failed", "report": probed.get("report"), "judge_report": judged.get("report"),
            "url": url, "candidates": ids, "judge": judged.get("summary"), "probes": probed.get("summary")}
