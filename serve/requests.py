"""Request checks for the OpenAI-compatible API: every refusal is an OpenAI-style error body
`{"error": {"message", "type", "param", "code"}}` naming the field, never an exception in a replica."""
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from serve.config import LimitsConfig


ROLES = ("system", "user", "assistant")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; keep to a signed 64-bit value


def json_depth_exceeds(value, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: a hostile body cannot exhaust the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def check_origin(api_key: str | None, origin: str | None) -> None:
    """Without an API key, only pages served from this machine may call the API: a browser sends
    Origin on cross-site requests, so any other web page is refused with 403 (it could not read
    the answer anyway, but it must not make the server generate). With a key, the key decides."""
    if api_key or not origin:
        return
    if urlsplit(origin).hostname not in LOCAL_HOSTS:
        raise BadRequest(403, f"origin {origin[:80]!r}: without an API key only local pages may call this server "
                         "(set api_key to serve other origins)", None, "forbidden_origin")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    kind = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 413: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class BadRequest(Exception):
    """A request refused with an OpenAI-style error (raised inside the ingress, answered at once)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        return error_body(self.status, self.message, self.param, self.code)


def number(body: dict, key: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value > high or value < low or (
            low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise BadRequest(400, f"{key}: {value!r} is not a number in {bound}", key, "invalid_value")
    return float(value)


def content_text(content, where: str) -> str:
    """A message's content: a string, or OpenAI content parts of type text joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(400, f"{where}.content: expected a string or a list of text parts", where, "invalid_value")


def parse_common(body: dict, limits: LimitsConfig, default_max_tokens: int) -> dict:
    """The sampling fields shared by chat and completions, validated; BadRequest naming the field."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limits.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(400, f"max_tokens: {max_tokens!r} is not a positive integer", "max_tokens", "invalid_value")
    if max_tokens > limits.max_tokens:
        raise BadRequest(400, f"max_tokens: {max_tokens} is over this server's limit of {limits.max_tokens}",
                         "max_tokens", "invalid_value")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise BadRequest(400, "stop: expected a string or a list of up to 4 strings", "stop", "invalid_value")
    if body.get("n", 1) != 1:
        raise BadRequest(400, f"n: {body.get('n')!r}: only n=1 is supported", "n", "invalid_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise BadRequest(400, f"seed: {seed!r} is not an integer in [0, {MAX_SEED}]", "seed", "invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, f"stream: {stream!r} is not a boolean", "stream", "invalid_value")
    return dict(max_tokens=max_tokens, temperature=number(body, "temperature", 1.0, 0.0, 2.0),
                top_p=number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), stop=stop, seed=seed, stream=stream)


def parse_chat(body: dict, limits: LimitsConfig) -> dict:
    payload = parse_common(body, limits, limits.max_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages: expected a non-empty list of {role, content}", "messages", "invalid_value")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(400, f"messages.{i}: expected {{role, content}}", "messages", "invalid_value")
        if m["role"] not in ROLES:
            raise BadRequest(400, f"messages.{i}.role: {m['role'][:40]!r} is not one of {', '.join(ROLES)}",
                             "messages", "invalid_value")
        clean.append({"role": m["role"], "content": content_text(m.get("content"), f"messages.{i}")})
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadRequest(400, "chat_template_kwargs: expected an object", "chat_template_kwargs", "invalid_value")
    for key, value in kwargs.items():
        if key not in limits.chat_template_kwargs:
            allowed = ", ".join(limits.chat_template_kwargs) or "none"
            raise BadRequest(400, f"chat_template_kwargs.{str(key)[:40]}: not an option this server offers "
                             f"(allowed: {allowed})", "chat_template_kwargs", "invalid_value")
        if isinstance(value, (dict, list)) or (isinstance(value, str) and len(value) > 64):
            raise BadRequest(400, f"chat_template_kwargs.{key}: expected a boolean, number or short string",
                             "chat_template_kwargs", "invalid_value")
    payload.update(messages=clean, chat_template_kwargs=kwargs)
    return payload


def parse_completion(body: dict, limits: LimitsConfig) -> dict:
    payload = parse_common(body, limits, 16)  # OpenAI's default for /v1/completions
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest(400, "prompt: expected a string (or a list of one string)", "prompt", "invalid_value")
    payload["prompt"] = prompt
    return payload
