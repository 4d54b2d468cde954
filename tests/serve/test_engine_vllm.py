"""serve/engine_vllm.py: a candidate in vLLM's async engine behind modelyard's own ingress.

vLLM needs a CUDA GPU and is not installed here: these tests drive `VllmServeEngine` with a
stand-in for the three vLLM calls it makes (`VllmApi`: start the engine, sampling params, LoRA
requests), and check what is this project's own: the prompt side (the real zoo tokenizer and
chat template), the parameters handed over, the stream protocol, adapters and aborts. The real
engine serves on the GPU machine (BENCHMARKS.md, "Serve on vLLM through modelyard's ingress").
"""
import asyncio
import json
from types import SimpleNamespace

import pytest

from cluster.models.loading import LoadError
from cluster.models.registry import ModelRegistry
from serve.config import CandidateConfig
from serve.engine_hf import GenRequest, RequestError
from serve.engine_vllm import VllmServeEngine, engine_args

REPLY = [" The", " weather", " is", " mild", "."]


class StandInApi:
    """Records what the engine was asked; generates REPLY's pieces (one per step)."""

    def __init__(self, stop_after: int | None = None):
        self.started, self.requests, self.aborted = None, [], []
        self.stop_after = stop_after

    def start(self, kwargs):
        self.started = kwargs
        api = self

        class Engine:
            model_config = SimpleNamespace(max_model_len=kwargs.get("max_model_len", 2048))

            async def generate(self, prompt, params, request_id, lora_request=None):
                api.requests.append((prompt, params, lora_request))
                n = min(len(REPLY), params["max_tokens"], api.stop_after or len(REPLY))
                reason = "length" if n == params["max_tokens"] else "stop"
                try:
                    for i in range(n):
                        await asyncio.sleep(0)
                        done = i == n - 1
                        text = REPLY[i] if params["kind"] == "DELTA" else "".join(REPLY[:i + 1])
                        ids = [100 + i] if params["kind"] == "DELTA" else list(range(100, 101 + i))
                        if params["kind"] == "DELTA" or done:
                            yield SimpleNamespace(finished=done, outputs=[SimpleNamespace(
                                text=text, token_ids=ids, finish_reason=reason if done else None)])
                except GeneratorExit:
                    api.aborted.append(request_id)  # what AsyncLLM.generate does: abort the request
                    raise

        return Engine()

    @staticmethod
    def sampling(kind, **fields):
        return {"kind": kind, **fields}

    @staticmethod
    def lora(name, int_id, path):
        return ("lora", name, int_id, path)


@pytest.fixture
def registry(zoo):
    return ModelRegistry.load([zoo.registry_path])


def _engine(registry, api, **cand):
    candidate = CandidateConfig(**{"id": "exa", "model": "exaone4-c", "engine": "vllm", "num_gpus": 1, **cand})
    return VllmServeEngine(candidate, registry, api=api)


@pytest.fixture
def gpu_node(monkeypatch):
    """The load decision as on a CUDA node (the vllm engine refuses a CPU-only one)."""
    import serve.engine_hf
    from cluster.node import NodeFacts

    def facts():
        return NodeFacts(hostname="gpu", cuda=True, gpu_names=("NVIDIA H200",), cuda_capabilities=(9.0,),
                         gpu_mem_gib=(139.8,), cpu_mem_gib=128.0, cpu_count=16)

    monkeypatch.setattr("cluster.node.node_facts", facts)
    return serve.engine_hf


def test_generate_hands_token_ids_and_greedy_params_to_vllm(registry, gpu_node):
    api = StandInApi()
    engine = _engine(registry, api, max_model_len=1024, engine_kwargs={"enforce_eager": True})
    assert api.started["tensor_parallel_size"] == 1 and api.started["enforce_eager"] is True
    assert api.started["model"] == api.started["tokenizer"] and api.started["max_model_len"] == 1024
    assert engine.context_tokens == 1024
    prompt = engine.render_chat([{"role": "user", "content": "How is the weather?"}])
    result = asyncio.run(engine.generate(GenRequest(prompt=prompt, max_tokens=16, temperature=0, stop=["", "\n"],
                                                    seed=7)))
    sent, params, lora = api.requests[0]
    assert sent["prompt_token_ids"] == engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert params == {"kind": "FINAL_ONLY", "temperature": 0.0, "top_p": 1.0, "seed": 7, "max_tokens": 16,
                      "stop": ["\n"], "skip_special_tokens": True} and lora is None
    assert (result.text, result.completion_tokens, result.finish_reason) == ("".join(REPLY), 5, "stop")
    assert result.prompt_tokens == len(sent["prompt_token_ids"])
    # ids the ingress's check counted already (`prepare`) go to vLLM as they are, not tokenized again
    again = asyncio.run(engine.generate(GenRequest(prompt=prompt, max_tokens=4, temperature=0,
                                                   prompt_token_ids=[5, 6, 7])))
    assert api.requests[1][0] == {"prompt_token_ids": [5, 6, 7]} and again.prompt_tokens == 3


def test_stream_yields_pieces_then_the_counts_and_max_tokens_is_length(registry, gpu_node):
    api = StandInApi()
    engine = _engine(registry, api)

    async def collect():
        return [item async for item in engine.stream(GenRequest(prompt="Hi", max_tokens=3, temperature=0.5,
                                                                 top_p=0.9, add_special_tokens=True))]

    items = asyncio.run(collect())
    assert [i["text"] for i in items[:-1]] == REPLY[:3]
    assert items[-1] == {"finish_reason": "length", "prompt_tokens": len(engine.tokenizer("Hi")["input_ids"]),
                         "completion_tokens": 3}
    assert api.requests[0][1]["kind"] == "DELTA" and api.requests[0][1]["temperature"] == 0.5


def test_a_stream_closed_early_aborts_its_request(registry, gpu_node):
    api = StandInApi()
    engine = _engine(registry, api)

    async def first_piece_then_leave():
        stream = engine.stream(GenRequest(prompt="Hi", max_tokens=5, temperature=0))
        first = await stream.__anext__()
        await stream.aclose()  # what Serve does when the HTTP client goes away
        return first

    assert asyncio.run(first_piece_then_leave()) == {"text": REPLY[0]}
    assert len(api.aborted) == 1


def test_adapters_become_lora_requests_and_unknown_ones_are_refused(registry, gpu_node, tmp_path):
    adapter = tmp_path / "polite"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32}))
    api = StandInApi()
    engine = _engine(registry, api, lora_adapters={"polite": str(adapter)})
    assert (api.started["enable_lora"], api.started["max_loras"], api.started["max_lora_rank"]) == (True, 1, 32)
    asyncio.run(engine.generate(GenRequest(prompt="Hi", adapter="polite")))
    assert api.requests[0][2] == ("lora", "polite", 1, str(adapter))
    with pytest.raises(RequestError, match="model: exa has no adapter 'rude'"):
        asyncio.run(engine.generate(GenRequest(prompt="Hi", adapter="rude")))


def test_engine_args_need_whole_gpus_and_a_gpu_node(registry, zoo):
    cand = CandidateConfig(id="exa", model="exaone4-c", engine="vllm", num_gpus=1.5)
    with pytest.raises(LoadError, match="candidates.exa.num_gpus: 1.5: the vllm engine needs whole GPUs"):
        engine_args(cand, "/m", "bfloat16", adapters={})
    with pytest.raises(LoadError, match="candidate exa: the vllm engine needs a CUDA GPU; this node has none"):
        _engine(registry, StandInApi())  # this machine has no GPU


def test_engine_args_for_two_gpus_are_tensor_parallel_without_multicast_all_reduce():
    cand = CandidateConfig(id="big", model="exaone4-c", engine="vllm", num_gpus=2)
    args = engine_args(cand, "/m", "bfloat16", adapters={})
    assert args["tensor_parallel_size"] == 2
    assert args["compilation_config"]["pass_config"]["fuse_allreduce_rms"] is False
    one = engine_args(CandidateConfig(id="one", model="exaone4-c", engine="vllm", num_gpus=1), "/m", "bfloat16",
                      adapters={})
    assert "compilation_config" not in one
