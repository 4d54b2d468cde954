"""The probe console: a page at GET / for the operator's manual probe-testing (seed 001), typing at
2 to 4 served candidates side by side, each column with or without the suite's system prompt.

    GET  /                      the page (plain HTML/JS/CSS from serve/console_assets/; no key:
                                it holds no data)
    GET  /console/assets/NAME   its script and style sheet
    GET  /console/suite         the configured probe suite: system prompt, probes, conditions
    POST /console/check         {"replies": [...], "probe": id|null} -> the rule checks
    POST /console/save          the page's session -> a probe run in the store (serve/probes/probe_runs.py)

Replies stream from the app's own /v1/chat/completions. The rule checks are `yard probe`'s
`grade` (serve/probes/probes.py), computed here, so the page and the reports never disagree. Every
data route takes the app's API key (`Authorization: Bearer`); the page keeps it in memory only.

`ProbeConsole` is a mixin of the ingress (serve/app.py `OpenAIIngress`): it uses the ingress's
`_check_auth`, `_read_json`, `limits`, `model_ids`, `probe_suite`, `storage_uri`, `endpoint_url`.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from cluster.config import UserError, format_validation_error
from serve.requests import BadRequest

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("console_assets")
ASSET_TYPES = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and runs no inline script; no other site may frame it.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                           "form-action 'none'",
                "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# A saved session holds every reply of up to 4 columns: more than one chat request may carry.
SAVE_MAX_BYTES = 4 * 1024 * 1024
MAX_CHECK_REPLIES = 64

console_routes = APIRouter()


def _asset(name: str, media_type: str) -> Response:
    return Response((ASSETS / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)


class ProbeConsole:
    """The console's routes, mixed into the ingress."""

    def _console_suite(self):
        """The configured suite, loaded once per replica; None when `probe_suite: null`."""
        from serve.probes.probe_suite import load_suite

        if not self.probe_suite:
            return None
        if getattr(self, "_console_suite_cache", None) is None:
            self._console_suite_cache = load_suite(self.probe_suite)
        return self._console_suite_cache

    def _require_suite(self, what: str):
        suite = self._console_suite()
        if suite is None:
            raise BadRequest(404, f"{what}: no probe suite configured (probe_suite: null)", None, "not_found")
        return suite

    @console_routes.get("/")
    async def console_page(self):
        return _asset("index.html", "text/html; charset=utf-8")

    @console_routes.get("/console/assets/{name}")
    async def console_asset(self, name: str):
        if name not in ASSET_TYPES:
            return BadRequest(404, f"console asset {name[:60]!r}: no such file", None, "not_found").response()
        return _asset(name, ASSET_TYPES[name])

    @console_routes.get("/console/suite")
    async def console_suite(self, request: Request):
        """What the page needs of the suite; "suite": null when none is configured (the page
        still chats, without system prompt toggles or probes)."""
        try:
            self._check_auth(request)
        except BadRequest as exc:
            return exc.response()
        suite = self._console_suite()
        out = {"max_tokens_limit": self.limits.max_tokens, "conditions": ["with_system", "without_system"]}
        if suite is None:
            return {**out, "suite": None, "persona": None, "system_prompt": None, "probes": [], "params": {}}
        probes = [{"id": p.id, "group": p.group, "turns": p.turns, "expected": suite.expected_for(p)}
                  for p in suite.all_probes()]
        return {**out, "suite": suite.name, "persona": suite.persona.name, "system_prompt": suite.persona.system_prompt,
                "probes": probes, "params": suite.params}

    @console_routes.post("/console/check")
    async def console_check(self, request: Request):
        """The rule checks of one exchange: {"replies": [reply of each turn], "probe": id or null}
        -> {"rules": {rule: {"passed", "reason"}}, "passed", "matched", "expected"}. A probe's fact
        check reads its final reply, as in `yard probe`."""
        from serve.probes.probes import grade

        try:
            body = await self._read_json(request)
            unknown = sorted(set(body) - {"replies", "probe"})
            if unknown:
                raise BadRequest(400, f"{unknown[0]}: unknown field (allowed: replies, probe)", unknown[0], "invalid_value")
            replies, probe_id = body.get("replies"), body.get("probe")
            if (not isinstance(replies, list) or not 1 <= len(replies) <= MAX_CHECK_REPLIES
                    or not all(isinstance(r, str) for r in replies)):
                raise BadRequest(400, f"replies: expected a list of 1 to {MAX_CHECK_REPLIES} strings", "replies",
                                 "invalid_value")
            expected = []
            if probe_id is not None:
                suite = self._require_suite("probe")
                probe = next((p for p in suite.all_probes() if p.id == probe_id), None)
                if probe is None:
                    raise BadRequest(400, f"probe: {str(probe_id)[:60]!r} is not a probe of suite {suite.name}",
                                     "probe", "invalid_value")
                expected = suite.expected_for(probe)
        except BadRequest as exc:
            return exc.response()
        graded = grade({"replies": replies}, expected)
        return {k: graded[k] for k in ("rules", "passed", "matched", "expected")}

    @console_routes.post("/console/save")
    async def console_save(self, request: Request):
        """The page's session (serve/probes/probe_runs.py `ConsoleSession`) graded and published as a
        probe run: {"run": prefix, "records": n, "failed": n}."""
        from serve.probes.probe_runs import ConsoleSession

        try:
            body = await self._read_json(request, max_bytes=SAVE_MAX_BYTES)
            try:
                session = ConsoleSession.model_validate(body)
            except ValidationError as exc:
                raise BadRequest(400, format_validation_error("session", exc), None, "invalid_value") from None
            for c, col in enumerate(session.columns):
                if col.model not in self.model_ids:
                    raise BadRequest(400, f"session: columns.{c}.model: {col.model[:60]!r} is not served here",
                                     None, "model_not_found")
            suite = self._require_suite("save")
            return await asyncio.to_thread(self._save_session, suite, session)
        except BadRequest as exc:
            return exc.response()

    def _save_session(self, suite, session) -> dict:
        from cluster.store.storage import open_store
        from serve.probes.probe_runs import save_console_session

        try:
            saved = save_console_session(open_store(self.storage_uri, self.endpoint_url), suite, session)
        except ValueError as exc:  # a probe id or turns the suite does not have
            raise BadRequest(400, f"session: {exc}", None, "invalid_value") from None
        except UserError as exc:  # the store refused (unreachable bucket, bad key)
            raise BadRequest(500, f"save: {exc}", None, None) from None
        log.info("probe console: saved %s (%d records)", saved["run"], saved["records"])
        return saved
