"""An OpenAI-compatible chat client for judges and probes: retries, bounded concurrency, a cache.

The users' KoMT judge was unusable because its API answered 429 (seed 002); this client treats
429, 5xx and dropped connections as "try again later" with exponential backoff plus jitter,
honouring `Retry-After`, and fails at once with one line on any other 4xx (a bad key or request
never gets better by retrying). A content-hash `ResponseCache` keyed on model + messages + params
(not the URL nor the key) means a rerun pays for no call twice; a `keep` predicate keeps useless
replies (a judgment without a rating) out of it, so a rerun asks those again.

    >>> client = ChatClient("http://127.0.0.1:8000/v1", "judge", api_key_env="JUDGE_API_KEY",
    ...                     cache=ResponseCache(".yard-cache/judge"))          # doctest: +SKIP
    >>> client.chat([{"role": "user", "content": "hi"}], temperature=0).text   # doctest: +SKIP
    >>> [r.text for r in client.chat_many([msgs1, msgs2], max_tokens=64)]      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

import httpx

from cluster.config import UserError
from cluster.store.storage import STATE_PREFIX, ArtifactStore

log = logging.getLogger(__name__)

# Statuses worth retrying: rate limits and server-side failures; every other 4xx is final.
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# A Retry-After beyond this is a misconfigured server, not a plan; cap the wait.
MAX_RETRY_AFTER_S = 300.0


class ChatError(UserError, RuntimeError):
    """A chat call that failed for good (a 4xx other than 429, retries exhausted, a bad reply),
    phrased as one line naming the endpoint and the cause."""


@dataclass(frozen=True)
class ChatReply:
    """One assistant reply: its text, whether it came from the cache, how many HTTP attempts it
    took (0 for a cache hit) and the server's token usage."""

    text: str
    cached: bool = False
    attempts: int = 1
    usage: dict = field(default_factory=dict)
    finish_reason: str | None = None


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    """The sha256 of (model, messages, params) as canonical JSON. The base URL and the API key are
    left out on purpose: the same judge model behind another URL gives the same judgment."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Replies by content hash, in a local directory or an ArtifactStore's state area.

    `ResponseCache(".yard-cache/judge")` keeps one JSON file per reply under the directory;
    `ResponseCache(store, namespace="judge")` keeps them at `_state/chat-cache/<namespace>/...`
    so a judge run on S3 shares its cache with the next run wherever it is started. Writes are
    atomic (temp + rename, or one PUT), so concurrent writers at worst write the same reply twice.
    """

    def __init__(self, location: "str | Path | ArtifactStore", namespace: str = "default"):
        self.namespace = namespace
        self._store = None
        self._dir: Path | None = None
        if isinstance(location, ArtifactStore):
            self._store = location
        else:
            self._dir = Path(location).expanduser() / namespace

    def _state_key(self, key: str) -> str:
        return f"chat-cache/{self.namespace}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict | None:
        """The cached record for `key` ({"text", "usage", "finish_reason"}), or None."""
        if self._dir is not None:
            try:
                return json.loads((self._dir / key[:2] / f"{key}.json").read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):  # a torn file from a killed writer is a miss
                return None
        state_key = self._state_key(key)
        if not self._store.exists(f"{STATE_PREFIX}/{state_key}"):
            return None
        return self._store.get_state(state_key)

    def put(self, key: str, record: dict) -> None:
        if self._dir is not None:
            path = self._dir / key[:2] / f"{key}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
            tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
            tmp.replace(path)
        else:
            self._store.put_state(self._state_key(key), record)

    def __len__(self) -> int:
        if self._dir is not None:
            return sum(1 for _ in self._dir.glob("*/*.json")) if self._dir.exists() else 0
        return len(self._store.list_state(f"chat-cache/{self.namespace}/"))


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_message(resp: httpx.Response) -> str:
    """The OpenAI-style `error.message` of a reply, else the start of its body."""
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body, dict) and body.get("detail"):
            return str(body["detail"])
    except ValueError:
        pass
    text = resp.text.strip().replace("\n", " ")
    return text[:200] or resp.reason_phrase


class ChatClient:
    """A chat-completions client for one model at one OpenAI-compatible `base_url` (".../v1").

    `chat()` is safe to call from many threads; at most `max_concurrency` requests are in flight
    per client whoever calls. The API key is `api_key`, else the environment variable
    `api_key_env` (a named but unset variable is an error: a silent anonymous call would 401).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 4,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 120.0,
        cache: ResponseCache | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ChatError(f"base_url: {base_url!r} is not an http(s) URL (expected e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ChatError(f"model: empty model name for {base_url}")
        if max_concurrency < 1 or max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ChatError("max_concurrency must be >= 1, max_retries and backoff_s >= 0, timeout_s > 0")
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ChatError(f"api_key_env: environment variable {api_key_env} is not set (the key for {base_url})")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache = cache
        self._slots = threading.BoundedSemaphore(max_concurrency)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self.requests_sent = 0  # HTTP attempts made (cache hits make none); for reports and tests

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with up to 25% jitter (so many clients do not retry in lockstep);
        a server's Retry-After is a floor, never shortened."""
        delay = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        delay *= 1.0 + random.uniform(0.0, 0.25)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
        return delay

    def chat(self, messages: list[dict], *, keep: Callable[[str], bool] | None = None, **params: Any) -> ChatReply:
        """One chat completion. `params` go into the request body as given (temperature,
        max_tokens, chat_template_kwargs, ...). Raises ChatError when it fails for good.

        `keep(text)` decides what the cache holds: a reply it rejects (a judgment without a
        rating) is returned but not stored, and a stored one it rejects counts as a miss, so a
        rerun asks again instead of replaying a useless reply forever."""
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ChatError("messages: expected a non-empty list of {role, content} mappings")
        if params.get("stream"):
            raise ChatError("stream: this client reads whole replies; leave stream unset")
        key = cache_key(self.model, messages, params) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None and (keep is None or keep(hit["text"])):
                return ChatReply(hit["text"], cached=True, attempts=0, usage=hit.get("usage") or {},
                                 finish_reason=hit.get("finish_reason"))
        reply = self._post(messages, params)
        if key is not None and (keep is None or keep(reply.text)):
            self.cache.put(key, {"text": reply.text, "usage": reply.usage, "finish_reason": reply.finish_reason,
                                 "model": self.model})
        return reply

    def chat_many(self, conversations: list[list[dict]], *, return_errors: bool = False,
                  keep: Callable[[str], bool] | None = None, **params: Any) -> list[ChatReply]:
        """`chat()` over many conversations, at most `max_concurrency` at a time, replies in input
        order. The first failure is raised once the calls in flight finish (queued ones are
        cancelled); with `return_errors=True` a failed conversation's slot holds its ChatError
        instead. `keep`: as for `chat()`."""
        if not conversations:
            return []
        workers = min(self.max_concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat") as pool:
            futures = [pool.submit(self.chat, msgs, keep=keep, **params) for msgs in conversations]
            out = []
            for f in futures:
                try:
                    out.append(f.result())
                except ChatError as exc:
                    if not return_errors:
                        pool.shutdown(cancel_futures=True)  # queued calls are not worth paying for now
                        raise
                    out.append(exc)
            return out

    def _post(self, messages: list[dict], params: dict) -> ChatReply:
        url = f"{self.base_url}/chat/completions"
        body = {**params, "model": self.model, "messages": messages}
        last = ""
        for attempt in range(1, self.max_retries + 2):
            retry_after = None
            with self._slots:
                self.requests_sent += 1
                try:
                    resp = self._http.post(url, json=body)
                except httpx.TransportError as exc:  # refused, reset, timed out: the server may come back
                    resp, last = None, f"{type(exc).__name__}: {str(exc) or 'connection failed'}"
            if resp is not None:
                if resp.status_code == 200:
                    return self._parse(url, resp, attempt)
                message = _error_message(resp)
                last = f"HTTP {resp.status_code}: {message}"
                if resp.status_code not in RETRY_STATUSES:
                    raise ChatError(f"POST {url} (model {self.model}): {last}")
                retry_after = _retry_after_s(resp.headers.get("retry-after"))
            if attempt > self.max_retries:
                break
            delay = self._delay_s(attempt, retry_after)
            log.warning("%s model %s: %s; retry %d/%d in %.2fs", url, self.model, last, attempt, self.max_retries, delay)
            time.sleep(delay)
        raise ChatError(f"POST {url} (model {self.model}): gave up after {self.max_retries + 1} attempts; last: {last}")

    def _parse(self, url: str, resp: httpx.Response, attempt: int) -> ChatReply:
        try:
            body = resp.json()
            choice = body["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = resp.text.strip().replace("\n", " ")[:120]
            raise ChatError(f"POST {url} (model {self.model}): HTTP 200 but not a chat completion: {snippet!r}") from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ChatReply(text or "", cached=False, attempts=attempt, usage=usage,
                         finish_reason=choice.get("finish_reason"))
