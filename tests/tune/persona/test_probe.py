"""tune/persona/probe.py: the persona probe step; its in-process client answers as the HTTP client
does (the served transport runs in the persona job's end-to-end test, tests/tune/persona/test_job.py)."""
from tune.persona.probe import EngineClient, _params
from tune.persona.config import PersonaConfig


class _FakeEngine:
    def __init__(self):
        self.seen = []

    def render_chat(self, messages, kwargs):
        self.seen.append(kwargs)
        return messages[-1]["content"]

    def generate(self, reqs):
        from serve.engine_hf import GenResult

        return [GenResult(f"{r.prompt}:{r.max_tokens}:{r.temperature}", 1, 1, "stop", len(reqs)) for r in reqs]


def test_engine_client_answers_like_chat_client():
    engine = _FakeEngine()
    client = EngineClient(engine, "m")
    replies = client.chat_many([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                               max_tokens=5, chat_template_kwargs={"enable_thinking": False})
    assert [r.text for r in replies] == ["a:5:0.0", "b:5:0.0"]
    assert engine.seen == [{"enable_thinking": False}] * 2


def test_both_transports_send_the_same_request_parameters():
    cfg = PersonaConfig.model_validate({"base": "qwen3-b", "prep": {"data_dir": "x"},
                                        "chat_template_kwargs": {"enable_thinking": False}})
    assert _params(cfg) == {"max_tokens": cfg.probe.max_tokens, "chat_template_kwargs": {"enable_thinking": False}}
