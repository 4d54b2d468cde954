"""Probe runs in the store, `yard probe`'s and the probe console's alike: saving a console session
as one, and listing them all.

Every probe run lives at kind "probe", model id = the suite's name (serve/probes/probes.py `run_probes`):
results.json (one graded record per conversation), summary.json, report.md and its plots. A
console session (serve/console.py) is saved as one more such run, graded here on the server with
the same `grade` as `yard probe`, with the page's whole session beside it (session.json) and
`source: "console"` on its marker, so one listing shows both kinds:

    session = ConsoleSession.model_validate(body)          # what the page posts to /console/save
    run = save_console_session(open_store(".yard"), load_suite("configs/probes.persona.yaml"), session)
    [(r["run"], r["source"]) for r in list_probe_runs(open_store(".yard"))]
    # [("probe/seoyun/20261201-101010-...", "probe"), ("probe/seoyun/20261201-111111-...", "console")]
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field, model_validator

from cluster.config import YardModel
from serve.probes.probe_suite import ProbeSuite
from serve.probes.probes import CONDITIONS, PROBE_KIND, Condition, grade, summarize

CONSOLE_SOURCE = "console"
YARD_PROBE_SOURCE = "probe"  # runs without a `source` on their marker: `yard probe` and the probe route
MANUAL_GROUP = "manual"  # a typed message, not one of the suite's probes


class ConsoleTurn(YardModel):
    user: str = Field(min_length=1)
    reply: str


class ConsoleExchange(YardModel):
    """A typed message (probe null: one turn of its column's conversation, which the next typed
    message continues) or a suite probe run in the column (its own conversation, all its turns)."""

    probe: str | None = None
    condition: Condition
    turns: list[ConsoleTurn] = Field(min_length=1)
    at: str = ""  # when the page sent it (ISO time)

    @model_validator(mode="after")
    def _one_turn(self) -> "ConsoleExchange":
        if self.probe is None and len(self.turns) != 1:
            raise ValueError("a typed message (probe: null) is one turn")
        return self


class ConsoleColumn(YardModel):
    """One column of the page: a served model, its system-prompt toggle as saved, what it was asked."""

    model: str = Field(min_length=1)
    system_prompt: bool
    exchanges: list[ConsoleExchange] = Field(default_factory=list)


class ConsoleSettings(YardModel):
    max_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0.0, le=2.0)


class ConsoleSession(YardModel):
    """The body of POST /console/save: the page's session as it stands."""

    started_at: str
    settings: ConsoleSettings
    columns: list[ConsoleColumn] = Field(min_length=2, max_length=4)
    note: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _not_empty(self) -> "ConsoleSession":
        if not any(c.exchanges for c in self.columns):
            raise ValueError("nothing to save: no column has a reply yet")
        return self


def session_records(session: ConsoleSession, suite: ProbeSuite) -> list[dict]:
    """One graded record per exchange, in `yard probe`'s record shape ("candidate" is the column's
    model; "column" and "at" added). ValueError naming the exchange when a probe id is not the
    suite's or its turns are not that probe's (the record would claim a probe it did not ask)."""
    probes = {p.id: p for p in suite.all_probes()}
    system = [{"role": "system", "content": suite.persona.system_prompt}]
    records = []
    for c, col in enumerate(session.columns):
        chat: list[dict] = []  # the column's conversation: its typed messages and their replies
        for e, ex in enumerate(col.exchanges):
            where = f"columns.{c}.exchanges.{e}"
            if ex.probe is None:
                history, probe_id, group, expected = chat, f"{MANUAL_GROUP}-{e + 1}", MANUAL_GROUP, []
            else:
                probe = probes.get(ex.probe)
                if probe is None:
                    raise ValueError(f"{where}.probe: {ex.probe!r} is not a probe of suite {suite.name}")
                if [t.user for t in ex.turns] != probe.turns:
                    raise ValueError(f"{where}.turns: not the turns of probe {ex.probe!r}")
                history, probe_id, group, expected = [], probe.id, probe.group, suite.expected_for(probe)
            messages = (system if ex.condition == "with_system" else []) + history
            for t in ex.turns:
                messages = messages + [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply}]
            if ex.probe is None:
                chat = chat + messages[-2:]
            conv = {"probe": probe_id, "group": group, "condition": ex.condition, "messages": messages,
                    "replies": [t.reply for t in ex.turns]}
            records.append({"candidate": col.model, "column": c + 1, "at": ex.at, **grade(conv, expected)})
    return records


def session_summary(session: ConsoleSession, records: list[dict], suite: ProbeSuite) -> dict:
    """`run_probes`' summary shape (rules only, no judge) over the session's records, per model."""
    models = list(dict.fromkeys(col.model for col in session.columns))
    candidates = []
    for model in models:
        mine = [r for r in records if r["candidate"] == model]
        candidates.append({"id": model, "model": model, "base_url": "probe console", "group": "", "variant": "",
                           "error": None, "conditions": {c: summarize(mine, suite, c, judged=False) for c in CONDITIONS}})
    return {"suite": suite.name, "persona": suite.persona.name, "conditions": list(CONDITIONS), "judge": None,
            "candidates": candidates, "status": "ok", "source": CONSOLE_SOURCE}


def save_console_session(store, suite: ProbeSuite, session: ConsoleSession) -> dict:
    """Grade the session and publish it as a probe run (kind "probe", model id = suite name):
    session.json, results.json, summary.json and `yard probe`'s report. Returns {"run", "records",
    "failed"}: the run's prefix, how many records, how many failed a rule."""
    from serve.probes.probe_report import write_report

    records = session_records(session, suite)
    summary = session_summary(session, records, suite)
    saved = {**session.model_dump(), "saved_at": datetime.now(timezone.utc).isoformat()}
    run = store.new_run(PROBE_KIND, suite.name)
    with tempfile.TemporaryDirectory(prefix="yard-console-") as tmp:
        paths = write_report(summary, records, suite, Path(tmp))
        keys = {name: run.put_file(p.name, p) for name, p in paths.items()}
    keys["results"] = run.put_json("results.json", records)
    keys["session"] = run.put_json("session.json", saved)
    summary.update(run=run.prefix, report=store.locate(keys["report"]),
                   files={name: store.locate(k) for name, k in keys.items()})
    run.put_json("summary.json", summary)
    models = [c["id"] for c in summary["candidates"]]
    run.complete(status="ok", source=CONSOLE_SOURCE, candidates=len(models), models=models, failed=0)
    return {"run": run.prefix, "records": len(records), "failed": sum(not r["passed"] for r in records)}


def list_probe_runs(store, suite: str | None = None) -> list[dict]:
    """Every complete probe run (of `suite`, or of every suite), oldest first: {"run" (its
    prefix), "suite", "name", "source" ("probe" for `yard probe` and the probe route, "console"),
    "status", "completed_at", "candidates"}."""
    rows = []
    for name in [suite] if suite else store.model_ids(PROBE_KIND):
        for run in store.runs(PROBE_KIND, name):
            if run.complete:
                rows.append({"run": run.prefix, "suite": run.model_id, "name": run.name,
                             "source": run.marker.get("source", YARD_PROBE_SOURCE), "status": run.marker.get("status"),
                             "completed_at": run.marker.get("completed_at"), "candidates": run.marker.get("candidates")})
    return sorted(rows, key=lambda r: r["name"])
