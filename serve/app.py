"""The OpenAI-compatible Serve app: one deployment per candidate, one FastAPI ingress in front.

    GET  /v1/models             the served ids (candidates and "<id>:<adapter>" LoRA ids)
    POST /v1/chat/completions   chat, `stream: true` answers SSE chunks then `data: [DONE]`
    POST /v1/completions        raw prompt completion (stream too)

Each candidate is a `CandidateServer` deployment (num_cpus/num_gpus, replicas or autoscaling): HF batches with
`@serve.batch`, vLLM continuously. The ingress checks key, body size, JSON and fields; the candidate renders the
prompt and checks token limits; a refusal is an OpenAI-style error body with 400/401/404/413, never a crashed
replica. Building and starting: serve/deploy.py. The probe console (GET /, /console/...): serve/console.py.
"""

import asyncio
import hmac
import json
import logging
import re
import threading
import time
import uuid
from contextlib import aclosing, nullcontext

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.client import ChatClient, ChatError, ChatReply
from serve.config import CandidateConfig, LimitsConfig
from serve.console import ProbeConsole, console_routes
from serve.local_handle import LocalHandle
from serve.requests import (BadRequest, check_origin, error_body, json_depth_exceeds, number as _number,
                            parse_chat, parse_completion)

log = logging.getLogger(__name__)
APP_NAME = "yard"
VLLM_APP_NAME = "yard-vllm"
VLLM_ROUTE = "/vllm"  # where vLLM candidates live when the config mixes both engines


def isolate_failures(run, requests: list[dict], name: str = "") -> list[dict]:
    """`run(requests)` as one batch; when the batch fails, each request alone, so that one bad
    request answers 500 by itself and the ones batched with it are answered normally."""
    try:
        return run(requests)
    except Exception as exc:
        if len(requests) == 1:
            log.exception("candidate %s: request failed", name)
            return [{"error": [500, f"generation failed: {type(exc).__name__}: {exc}", None, None]}]
        log.warning("candidate %s: batch of %d failed (%s); answering each request alone", name, len(requests),
                    type(exc).__name__)
    return [isolate_failures(run, [r], name)[0] for r in requests]


async def _in_thread(it):
    """An iterator's items, each `next` run in a worker thread (a blocking generator off the loop)."""
    done = object()
    while (item := await asyncio.to_thread(next, it, done)) is not done:
        yield item


# --- the candidate deployment --------------------------------------------------------------
@serve.deployment
class CandidateServer:
    """One candidate's engine on a replica (HFEngine, or VllmServeEngine for `engine: vllm`):
    `prepare` renders and checks a request, `generate` batches (vLLM: continuously), `stream`
    yields chunks of one request."""

    def __init__(self, candidate: dict, registry_paths: list[str], storage_uri: str, endpoint_url: str | None,
                 limits: dict):
        import torch

        from cluster.models.registry import ModelRegistry
        from serve.engine_hf import HFEngine

        self.candidate = CandidateConfig.model_validate(candidate)
        self.limits = LimitsConfig.model_validate(limits)
        if self.candidate.num_gpus == 0 and self.candidate.num_cpus >= 1:
            # torch would use every core of the host; the replica reserved num_cpus of them
            torch.set_num_threads(int(self.candidate.num_cpus))
        registry = ModelRegistry.load(registry_paths) if self.candidate.model else None
        self.vllm = self.candidate.engine == "vllm"
        if self.vllm:  # vLLM's async engine; its continuous batching replaces @serve.batch
            from serve.engine_vllm import VllmServeEngine

            self.engine = VllmServeEngine(self.candidate, registry, storage_uri=storage_uri, endpoint_url=endpoint_url)
        else:
            self.engine = HFEngine(self.candidate, registry, storage_uri=storage_uri, endpoint_url=endpoint_url)
        self.generate_batch.set_max_batch_size(self.candidate.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.candidate.batch_wait_timeout_s)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.started_at = time.time()
        self.streams_cancelled = 0  # streams whose client went away before the end

    def info(self) -> dict:
        """Who this replica is and the sizes of the batches it generated (tests and benchmarks)."""
        return {"model_ids": self.engine.model_ids(), "replica_id": self.replica_id, "started_at": self.started_at,
                "batch_sizes": list(self.engine.batch_sizes), "context_tokens": self.engine.context_tokens,
                "streams_cancelled": self.streams_cancelled}

    def prepare(self, payload: dict) -> dict:
        """Render the prompt and check the token limits: {"request": GenRequest fields,
        "prompt_tokens", "prompt"} or {"error": [status, message, param, code]}."""
        from serve.engine_hf import RequestError

        try:
            if "messages" in payload:
                prompt = self.engine.render_chat(payload["messages"], payload.get("chat_template_kwargs"))
                add_special, param = False, "messages"
            else:
                prompt, add_special, param = payload["prompt"], True, "prompt"
            ids = self.engine.tokenize(prompt, add_special)
            n_prompt = len(ids)
        except RequestError as exc:
            return {"error": [400, str(exc), "messages", None]}
        max_tokens = payload["max_tokens"]
        if n_prompt > self.limits.max_prompt_tokens:
            return {"error": [400, f"{param}: {n_prompt} prompt tokens; the limit is {self.limits.max_prompt_tokens}",
                              param, "context_length_exceeded"]}
        context = self.engine.context_tokens
        if context and n_prompt + max_tokens > context:
            return {"error": [400, f"max_tokens: {n_prompt} prompt + {max_tokens} new tokens exceed the model's "
                                   f"context of {context}", "max_tokens", "context_length_exceeded"]}
        request = dict(prompt=prompt, max_tokens=max_tokens, temperature=payload["temperature"],
                       top_p=payload["top_p"], stop=payload["stop"], adapter=payload.get("adapter"),
                       seed=payload.get("seed"), add_special_tokens=add_special,
                       # vLLM takes these ids as they are (no second tokenizing on the event loop)
                       prompt_token_ids=ids if self.vllm else None)
        return {"request": request, "prompt_tokens": n_prompt, "prompt": prompt}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[dict]) -> list[dict]:
        from serve.engine_hf import GenRequest

        def run(batch: list[dict]) -> list[dict]:
            return [r.to_dict() for r in self.engine.generate([GenRequest(**r) for r in batch])]

        return await asyncio.to_thread(isolate_failures, run, requests, self.candidate.id)

    async def complete(self, payload: dict) -> dict:
        """`prepare` then `generate` in one call, so a request costs one handle round trip: the
        result with its rendered "prompt", or {"error": ...}."""
        prepared = await asyncio.to_thread(self.prepare, payload)
        if "error" in prepared:
            return prepared
        return {**await self.generate(prepared["request"]), "prompt": prepared["prompt"]}

    async def generate(self, request: dict) -> dict:
        if self.vllm:
            return await self._generate_vllm(request)
        return await self.generate_batch(request)

    async def _generate_vllm(self, request: dict) -> dict:
        from serve.engine_hf import GenRequest, RequestError

        try:
            return (await self.engine.generate(GenRequest(**request))).to_dict()
        except RequestError as exc:
            return {"error": [400, str(exc), "model", None]}
        except Exception as exc:  # one request's failure answers that request alone
            log.exception("candidate %s: request failed", self.candidate.id)
            return {"error": [500, f"generation failed: {type(exc).__name__}: {exc}", None, None]}

    async def stream(self, request: dict):
        """Chunks of one request ({"text"} ..., then {"finish_reason", ...}); HF generates off the
        event loop. A client that goes away (Serve cancels the call) stops the generation at its
        next token (vLLM: the request is aborted in the engine) instead of running to max_tokens."""
        from serve.engine_hf import GenRequest

        cancel = threading.Event()
        items = (self.engine.stream(GenRequest(**request)) if self.vllm
                 else _in_thread(self.engine.stream(GenRequest(**request), cancel=cancel)))
        finished = False
        try:
            async with aclosing(items):  # closed now, not by a later garbage collection
                async for item in items:
                    yield item
            finished = True
        finally:
            if not finished:
                cancel.set()
                self.streams_cancelled += 1


class HandleChatClient(ChatClient):
    """`ChatClient` over a candidate's deployment handle instead of HTTP, for the probe route:
    its calls go straight to the candidate (the same checks: `parse_chat`, `complete`), so they
    take no request slot of the ingress serving the probe call (through HTTP they did, and with
    `max_concurrent_requests: 1` the probe call waited on itself forever). Blocking: call it from
    a worker thread, never from the replica's event loop."""

    def __init__(self, server, model: str, adapter: str | None, limits: LimitsConfig, max_concurrency: int = 4):
        self.base_url, self.model, self.cache = f"serve-handle:{model}", model, None
        self.max_concurrency, self.max_retries = max_concurrency, 0
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._server, self._adapter, self._limits = server, adapter, limits
        self.requests_sent = 0

    def close(self) -> None:
        pass

    def _post(self, messages: list[dict], params: dict) -> ChatReply:
        try:
            payload = parse_chat({**params, "model": self.model, "messages": messages}, self._limits)
        except BadRequest as exc:
            raise ChatError(f"model {self.model}: {exc.message}") from None
        payload["adapter"] = self._adapter
        with self._slots:
            self.requests_sent += 1
            result = self._server.complete.remote(payload).result()
        if "error" in result:
            raise ChatError(f"model {self.model}: {result['error'][1]}")
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]}
        return ChatReply(result["text"], cached=False, attempts=1, usage=usage, finish_reason=result["finish_reason"])


# --- the ingress -----------------------------------------------------------------------------
# Everything the ingress uses is defined above it: serve.ingress pickles the app when the class
# is defined, so a name defined later in this module is missing on the replica.
class RedirectToVllm(Exception):
    """A request for a vLLM candidate: answered 307 to the vLLM app's route."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


api = FastAPI(title="modelyard serve", docs_url=None, redoc_url=None)
api.include_router(console_routes)  # the probe console's routes: methods of ProbeConsole below


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    return error_body(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None, None)


@api.exception_handler(Exception)
async def _crash(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return error_body(500, f"internal error: {type(exc).__name__}", None, None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpenAIIngress(ProbeConsole):
    """Auth, limits, JSON and field checks; routes each request to its candidate's deployment."""

    def __init__(self, settings: dict, servers: dict):
        self.limits = LimitsConfig.model_validate(settings["limits"])
        self.api_key = settings.get("api_key")
        self.servers = servers  # candidate id -> DeploymentHandle (LocalHandle when colocated)
        self._loop = None  # this replica's event loop, once a request ran on it
        self._colocated = None
        if settings.get("colocated"):  # `ingress: colocated`: the one candidate's engine lives here
            self._colocated = CandidateServer.func_or_class(*settings["colocated"])
            self.servers = {self._colocated.candidate.id: LocalHandle(self._colocated, lambda: self._loop)}
        self.model_ids: dict[str, tuple[str, str | None]] = {}  # served id -> (candidate id, adapter)
        for cand in settings["candidates"]:
            self.model_ids[cand["id"]] = (cand["id"], None)
            for name in cand.get("lora_adapters", {}):
                self.model_ids[f"{cand['id']}:{name}"] = (cand["id"], name)
        self.vllm_ids = set(settings.get("vllm_ids", []))
        self.created = int(time.time())
        self.self_url = settings.get("self_url")
        self.storage_uri, self.endpoint_url = settings.get("storage_uri"), settings.get("endpoint_url")
        self.probe_suite = settings.get("probe_suite")
        # (model, max_tokens) -> the probe summary: a served model does not change while the app
        # runs, so a repeated probe call answers from here instead of generating and publishing again
        self._probe_results: dict[tuple[str, int], dict] = {}
        self._probe_locks: dict[tuple[str, int], threading.Lock] = {}

    def _check_auth(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise BadRequest(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", None,
                             "invalid_api_key")

    async def _read_json(self, request: Request, max_bytes: int = 0) -> dict:
        self._check_auth(request)
        limit = max_bytes or self.limits.max_body_bytes  # the console's saved session may be bigger
        check_origin(self.api_key, request.headers.get("origin"))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise BadRequest(415, f"content-type: {ctype[:60] or 'none'!r}; send application/json", None,
                             "unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"body: {declared} bytes; the limit is {limit}", None, "request_too_large")
        # read as it arrives: a chunked body (no Content-Length) is cut off at the limit, not
        # read whole into memory first
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limit:
                raise BadRequest(413, f"body: more than {limit} bytes (the limit)", None, "request_too_large")
        raw = bytes(raw)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"body: not valid JSON ({exc})", None, "invalid_json") from None
        except RecursionError:
            raise BadRequest(400, f"body: nested deeper than {self.limits.max_json_depth} levels", None,
                             "invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "body: expected a JSON object", None, "invalid_json")
        if json_depth_exceeds(body, self.limits.max_json_depth):
            raise BadRequest(400, f"body: nested deeper than {self.limits.max_json_depth} levels", None,
                             "invalid_json")
        return body

    def _route(self, body: dict, request: Request) -> tuple[str, str | None]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "model: required (a string; GET /v1/models lists them)", "model", "invalid_value")
        if model in self.vllm_ids:
            # the vLLM app answers it; 307 keeps the method and body
            raise RedirectToVllm(VLLM_ROUTE + request.url.path)
        if model not in self.model_ids:
            known = ", ".join(sorted(self.model_ids | dict.fromkeys(self.vllm_ids)))
            raise BadRequest(404, f"model: {model!r} does not exist (served: {known})", "model", "model_not_found")
        return self.model_ids[model]

    def _engine_here(self):
        if self._colocated is None:
            raise RuntimeError("no candidate runs in this ingress (ingress: separate): call its own deployment")
        return self._colocated

    def info(self) -> dict:
        """The colocated candidate's `CandidateServer.info()` (its deployment is this one)."""
        return self._engine_here().info()

    async def complete(self, payload: dict) -> dict:
        """The colocated candidate's `CandidateServer.complete`, for callers holding this handle."""
        return await self._engine_here().complete(payload)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def list_models(self, request: Request):
        try:
            self._check_auth(request)
        except BadRequest as exc:
            return exc.response()
        data = [{"id": mid, "object": "model", "created": self.created, "owned_by": "modelyard",
                 "root": cand, "parent": cand if adapter else None}
                for mid, (cand, adapter) in self.model_ids.items()]
        data += [{"id": mid, "object": "model", "created": self.created, "owned_by": "modelyard-vllm", "root": mid,
                  "parent": None} for mid in sorted(self.vllm_ids)]
        return {"object": "list", "data": data}

    @api.post("/v1/yard/probe")
    async def probe(self, request: Request):
        """Run the configured persona probe suite against one served model, with and without the
        system prompt, through this app's own API (rule checks only: the rubric judge belongs to
        `yard probe`). Body: {"model": id, "max_tokens": n}. Answers the probe summary; the report is
        published in the store (kind "probe") once per model and max_tokens while the app runs: a
        repeated call answers the same summary with "cached": true. The calls go to the candidate's
        deployment directly (`HandleChatClient`), not through this ingress again."""
        try:
            body = await self._read_json(request)
            model = body.get("model")
            if model in self.vllm_ids or model not in self.model_ids:
                self._route(body, request)  # the same 400/404 as a completion
            if not self.probe_suite:
                raise BadRequest(404, "probe: no probe suite configured (probe_suite: null)", None, "not_found")
            max_tokens = int(_number(body, "max_tokens", 64, 1, self.limits.max_tokens))
        except BadRequest as exc:
            return exc.response()
        self._loop = asyncio.get_running_loop()  # a colocated candidate's calls from the worker run here
        return await asyncio.to_thread(self._run_probes, model, max_tokens)

    def _run_probes(self, model: str, max_tokens: int) -> dict:
        from cluster.store.storage import open_store
        from serve.probes.probe_suite import load_suite
        from serve.probes.probes import ProbeCandidate, run_probes

        key = (model, max_tokens)
        with self._probe_locks.setdefault(key, threading.Lock()):  # concurrent calls: one run
            if key in self._probe_results:
                return {**self._probe_results[key], "cached": True}
            cand_id, adapter = self.model_ids[model]
            # a blocking client in a worker thread, straight to the candidate's deployment
            client = HandleChatClient(self.servers[cand_id], model, adapter, self.limits)
            cand = ProbeCandidate(id=re.sub(r"[^A-Za-z0-9._-]", "-", model), base_url=self.self_url, model=model,
                                  params={"max_tokens": max_tokens})
            summary = run_probes(load_suite(self.probe_suite), [cand], None,
                                 open_store(self.storage_uri, self.endpoint_url), clients={cand.id: client})
            self._probe_results[key] = summary
            return {**summary, "cached": False}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._complete(request, chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool):
        try:
            body = await self._read_json(request)
            cand_id, adapter = self._route(body, request)
            payload = parse_chat(body, self.limits) if chat else parse_completion(body, self.limits)
            payload["adapter"] = adapter
            server = self.servers[cand_id]
            # a stream checks its request before the 200 header; any other request is one call
            result = await (server.prepare if payload["stream"] else server.complete).remote(payload)
            if "error" in result:
                raise BadRequest(*result["error"])
        except BadRequest as exc:
            return exc.response()
        except RedirectToVllm as exc:
            return RedirectResponse(exc.path, status_code=307)
        model = body["model"]
        if payload["stream"]:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._sse(server, result, model, chat, include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream")
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]},
                      "finish_reason": result["finish_reason"], "logprobs": None}
        else:
            choice = {"index": 0, "text": result["text"], "finish_reason": result["finish_reason"], "logprobs": None}
        out = {"id": _new_id(chat), "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}
        if body.get("yard_debug") is True:
            # what the model saw: lets probes and tests check the rendered template (e.g. no <think>)
            out["yard_debug"] = {"prompt": result["prompt"], "batch_size": result["batch_size"]}
        return out

    async def _sse(self, server, prepared: dict, model: str, chat: bool, include_usage: bool):
        """`data: {chunk}` lines, then `data: [DONE]`; an error mid-stream is sent as an error event."""
        cid, created = _new_id(chat), int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                d = ({"role": "assistant", "content": ""} if first else {"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": cid, "object": kind, "created": created, "model": model,
                                          "choices": [choice]}) + "\n\n"

        if chat:
            yield chunk(None, None, first=True)
        items = server.options(stream=True).stream.remote(prepared["request"])
        try:  # a colocated candidate's generator is closed with the response (a client gone stops it)
            async with aclosing(items) if hasattr(items, "aclose") else nullcontext(items):
                async for item in items:
                    if "text" in item:
                        yield chunk(item["text"], None)
                    else:
                        yield chunk(None, item["finish_reason"])
                        if include_usage:
                            n_in, n_out = item["prompt_tokens"], item["completion_tokens"]
                            usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
                            yield "data: " + json.dumps({"id": cid, "object": kind, "created": created, "model": model,
                                                         "choices": [], "usage": usage}) + "\n\n"
        except Exception as exc:  # the status line is sent already: report in-band, as OpenAI does
            log.exception("stream for %s failed", model)
            yield "data: " + json.dumps({"error": {"message": f"generation failed: {type(exc).__name__}",
                                                   "type": "server_error", "param": None, "code": None}}) + "\n\n"
        yield "data: [DONE]\n\n"
