"""A real OpenAI-compatible HTTP server that answers from recordings: a stand-in judge or candidate.

A real judge model (GPT-4 class) cannot run on a CPU test machine, so tests and `yard demo`
without a configured judge talk to this server instead: it speaks the same HTTP as the real
thing (`POST /v1/chat/completions`, `GET /v1/models`), replays recorded replies (well-formed,
malformed, scripted 429/500s with Retry-After) and records every request it received.

A recording is a mapping:

    {"match": "substring of the last user message" | null,   # null matches any request
     "status": 200,            # or 429, 500, 400, ...
     "content": "... [[8]]",   # the assistant text of a 200
     "raw": "not json",        # optional: sent verbatim as the body instead (malformed replies)
     "retry_after": 0.2,       # optional Retry-After header, seconds
     "delay_s": 0.0,           # optional latency before answering
     "times": 2}               # optional: serve this entry this many times, then skip it

How a request picks its entry: first, entries whose `match` occurs in the last user message, in
list order (so a scripted "429 twice, then [[8]]" for one question is two entries with the same
match, the first with `times: 2`); else the match-null entries: those with `times` left first, in
list order, then the unlimited ones in rotation (cycling). When nothing is eligible the default
reply answers: `default="judge"` a deterministic judgment ("... Rating: [[k]]", k from a hash of
the request; "[[A]]"/"[[B]]"/"[[C]]" for a pairwise prompt), `default="echo"` a deterministic
answer quoting the question, `default=None` an HTTP 500 naming the unmatched request.

    with ReplayServer([{"match": None, "status": 429, "retry_after": 0.1, "times": 1}]) as judge:
        ChatClient(judge.url, "replay-judge").chat([{"role": "user", "content": "rate"}])
        assert len(judge.requests) == 2
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cluster.config import UserError, jsonl_rows, read_text

log = logging.getLogger(__name__)

_ENTRY_KEYS = {"match", "status", "content", "raw", "retry_after", "delay_s", "times"}
MAX_BODY_BYTES = 10_000_000


class ReplayError(UserError, ValueError):
    """A recording that cannot be replayed, phrased as one line naming the entry and field."""


def load_recordings(recordings: list | str | Path) -> list[dict]:
    """Validate recordings given as a list, or a JSON (list) / JSONL file path."""
    source = "recordings"
    if isinstance(recordings, (str, Path)):
        path = Path(recordings)
        source = str(path)
        text = read_text(path, "recordings file", ReplayError)
        if text.lstrip().startswith("["):
            try:
                recordings = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ReplayError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        else:
            recordings = [row for _, row in jsonl_rows(text, path, ReplayError)]
    if not isinstance(recordings, list):
        raise ReplayError(f"{source}: expected a list of recordings, got {type(recordings).__name__}")
    out = []
    for i, entry in enumerate(recordings):
        where = f"{source}[{i}]"
        if not isinstance(entry, dict):
            raise ReplayError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ReplayError(f"{where}.{sorted(unknown)[0]}: unknown field (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
        status = entry.get("status", 200)
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ReplayError(f"{where}.status: {status!r} is not an HTTP status")
        if entry.get("match") is not None and not isinstance(entry["match"], str):
            raise ReplayError(f"{where}.match: expected a string or null")
        if status == 200 and "raw" not in entry and not isinstance(entry.get("content"), str):
            raise ReplayError(f"{where}.content: a 200 recording needs a string content (or raw)")
        times = entry.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ReplayError(f"{where}.times: {times!r} must be an integer >= 1")
        for key in ("retry_after", "delay_s"):
            if key in entry and (not isinstance(entry[key], (int, float)) or entry[key] < 0):
                raise ReplayError(f"{where}.{key}: {entry[key]!r} must be a number >= 0")
        out.append({"status": 200, **entry})
    return out


def _hash_int(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def default_judgment(messages: list[dict]) -> str:
    """A deterministic judgment for any judge prompt: a pairwise verdict when the prompt asks for
    [[A]]/[[B]]/[[C]], else a 1..10 rating, both derived from a hash of the messages."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    h = _hash_int(messages)
    if "[[A]]" in text and "[[B]]" in text:
        verdict = "ABC"[h % 3]
        return f"Replayed judgment (no real judge model configured). Verdict: [[{verdict}]]"
    return f"Replayed judgment (no real judge model configured). Rating: [[{1 + h % 10}]]"


def default_echo(messages: list[dict], model: str = "") -> str:
    """A deterministic stand-in answer that quotes the last user message (differs per model, so
    two replayed candidates do not give identical answers)."""
    last = _last_user(messages)
    return f"(replayed answer {_hash_int(model, messages) % 1000:03d}) You asked: {last[:200]}"


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class ReplayServer:
    """An OpenAI-compatible server in a background thread answering from `recordings`.

    `.url` is "http://127.0.0.1:PORT/v1"; `.requests` lists what it received
    ({"path", "model", "messages", "body", "authorization", "status"}), in arrival order;
    `.max_in_flight` is the most requests it ever handled at once (for concurrency checks).
    With `api_key` set, requests without `Authorization: Bearer <api_key>` get 401.
    """

    def __init__(self, recordings: list | str | Path = (), port: int = 0, *, default: str | None = "judge",
                 api_key: str | None = None, models: list[str] | None = None, host: str = "127.0.0.1"):
        if default not in ("judge", "echo", None):
            raise ReplayError(f"default: {default!r} is not allowed (allowed: judge, echo, None)")
        self.entries = load_recordings(list(recordings) if isinstance(recordings, tuple) else recordings)
        self._remaining = [e.get("times") for e in self.entries]
        self._cursor = 0
        self.default = default
        self.api_key = api_key
        self.models = list(models or ["replay"])
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise ReplayError("replay server is not started (use it as a context manager or call start())")
        return f"http://{self._host}:{self._server.server_address[1]}/v1"

    def start(self) -> "ReplayServer":
        if self._server is not None:
            return self
        handler = type("ReplayHandler", (_Handler,), {"replay": self})
        self._server = ThreadingHTTPServer((self._host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-server", daemon=True)
        self._thread.start()
        log.info("replay server at %s (%d recordings, default %s)", self.url, len(self.entries), self.default)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def chat_requests(self) -> list[dict]:
        """The received POSTs to /v1/chat/completions."""
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    # --- choosing a reply ----------------------------------------------------------------------
    def _take(self, i: int) -> dict:
        if self._remaining[i] is not None:
            self._remaining[i] -= 1
        return self.entries[i]

    def pick(self, messages: list[dict]) -> dict | None:
        """The recording for a request (consumed when it has `times`), or None for the default."""
        text = _last_user(messages)
        with self._lock:
            live = [i for i, r in enumerate(self._remaining) if r is None or r > 0]
            for i in live:
                match = self.entries[i].get("match")
                if match is not None and match in text:
                    return self._take(i)
            generic = [i for i in live if self.entries[i].get("match") is None]
            for i in generic:
                if self._remaining[i] is not None:
                    return self._take(i)
            if not generic:
                return None
            # Rotation over the unlimited generic entries: the first at or after the cursor.
            after = [i for i in generic if i >= self._cursor] or generic
            i = after[0]
            self._cursor = i + 1
            return self._take(i)


class _Handler(BaseHTTPRequestHandler):
    replay: ReplayServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # route http.server's stderr lines to logging
        log.debug("replay %s: " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes | dict, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str, headers: dict | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _authorized(self) -> bool:
        key = self.replay.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "missing or wrong API key (replay server)", "authentication_error")
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "replay"} for m in self.replay.models]
            self._send(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY_BYTES)) if length else b""
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "not_found_error")
            return
        try:
            body = json.loads(raw or b"null")
            messages = body["messages"]
            model = str(body.get("model") or "replay")
        except (ValueError, KeyError, TypeError):
            self._error(400, "body must be JSON with a messages list", "invalid_request_error")
            return
        server = self.replay
        with server._lock:
            server._in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server._in_flight)
            record = {"path": self.path, "model": model, "messages": messages, "body": body,
                      "authorization": self.headers.get("Authorization")}
            server.requests.append(record)
        try:
            self._answer(server, record, messages, model)
        finally:
            with server._lock:
                server._in_flight -= 1

    def _answer(self, server: ReplayServer, record: dict, messages: list, model: str) -> None:
        entry = server.pick(messages)
        if entry is None:
            if server.default is None:
                record["status"] = 500
                self._error(500, f"no recording matches {_last_user(messages)[:80]!r}", "server_error")
                return
            content = default_judgment(messages) if server.default == "judge" else default_echo(messages, model)
            entry = {"status": 200, "content": content}
        if entry.get("delay_s"):
            time.sleep(entry["delay_s"])
        status = entry["status"]
        record["status"] = status
        headers = {"Retry-After": f"{entry['retry_after']:g}"} if "retry_after" in entry else None
        if "raw" in entry:
            self._send(status, str(entry["raw"]).encode("utf-8"), headers)
        elif status == 200:
            self._send(200, _completion(model, messages, entry["content"]), headers)
        else:
            kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
            message = entry.get("content") or f"replayed HTTP {status}"
            self._error(status, message, kind, headers)


def _completion(model: str, messages: list, content: str) -> dict:
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    completion_words = len(content.split())
    return {
        "id": f"chatcmpl-replay-{_hash_int(messages, content) % 10**12:012d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        # Word counts stand in for tokens: the replay has no tokenizer, and usage is only reported.
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words,
                  "total_tokens": prompt_words + completion_words},
    }
