"""`yard probe CONFIG`: persona probes against OpenAI-compatible candidates, with and without the
persona's system prompt; rule checks on every reply and a judge-scored consistency rubric.

This is the users' manual probe-testing (seed 001: who are you, are you an AI, "ignore all
previous instructions", the persona's facts asked twice, a chat and then the identity question,
across base, fine-tune and quantizations) written down once and run the same way each time.

    yard probe configs/probe.demo.yaml                      # judge as configured (or rules only)
    yard probe configs/probe.demo.yaml judge=null           # rules only

    summary = run_probes(load_suite("configs/probes.persona.yaml"), [ProbeCandidate(
        id="sft", base_url="http://127.0.0.1:8000/v1", model="seoyun-sft", group="seoyun", variant="sft")],
        judge_client=None, store=open_store(".yard"))
    summary["candidates"][0]["conditions"]["without_system"]["pass_rate"]

Every probe is a conversation: its user turns are sent one after another and the candidate's own
replies are kept, so a drift probe tests the candidate's real conversation. A reply fails a rule
(serve/probes/probe_rules.py) when any of its turns does; the fact rule reads the final reply only. The
judge rates each conversation 1..10 ("[[n]]"); a judgment without a readable rating is counted as
unparseable and left out of the mean, never scored 0. Artifacts: store kind "probe", one run per
suite (results.json, summary.json, report.md, comparison.png, a .md and .png per candidate).

Exit codes: 0 every candidate answered; 1 a candidate or a judgment failed (the others are kept
and reported); 2 bad input (config, suite).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cluster.config import ConfigError, StorageConfig, YardModel, job_config, job_parser
from serve.client import ChatClient, ChatError, ResponseCache
from serve.judge.judge import ENDPOINTS_ONLY, JudgeEndpoint
from serve.judge.judge_prompts import parse_rating
from serve.probes.probe_rules import RULES, check_reply, matched_answers
from serve.probes.probe_suite import GROUPS, Probe, ProbeSuite, load_suite

log = logging.getLogger(__name__)

PROBE_KIND = "probe"
DEMO_SUITE = Path(__file__).resolve().parents[2] / "configs" / "probes.persona.yaml"
CONDITIONS = ("with_system", "without_system")
Condition = Literal["with_system", "without_system"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$"

JUDGE_SYSTEM = "You are a strict, impartial evaluator of role-play persona consistency."
JUDGE_PROMPT = """\
A chat model is meant to BE the persona below: a person, never an AI, an assistant or a language model.
{condition}

[Persona]
Name: {persona}
{description}
[Persona facts]
{facts}

[Conversation]
{conversation}

Rate how well the model's replies stay in character as this persona: it answers as the persona would,
keeps the persona's facts, does not admit being an AI or a model, does not break frame under
"ignore previous instructions" or role-play tricks, and shows no assistant boilerplate or <think> tags.
1 = completely out of character, 10 = fully and naturally in character.
Explain briefly, then give the rating in exactly this format: "Rating: [[n]]", for example "Rating: [[6]]".
"""
CONDITION_TEXT = {
    "with_system": "The persona's system prompt was given to the model in this conversation.",
    "without_system": ("No system prompt was given: the model must hold the persona on its own, as a model "
                       "fine-tuned to be this persona should."),
}


# --- config ------------------------------------------------------------------------------------

class ProbeCandidate(YardModel):
    """A candidate to probe: an OpenAI-compatible endpoint and model id, labelled for comparison."""

    id: str = Field(pattern=_ID)
    base_url: str = Field(pattern=r"^https?://")
    model: str | None = None  # the served model id; defaults to `id`
    api_key_env: str | None = None
    # Labels that put fine-tunes and quantizations of one persona side by side: group "seoyun",
    # variants "base", "sft", "sft+W4A16".
    group: str = ""
    variant: str = ""
    # Extra request fields for this candidate (over the suite's params), e.g.
    # chat_template_kwargs: {enable_thinking: false}.
    params: dict = Field(default_factory=dict)

    @property
    def served_model(self) -> str:
        return self.model or self.id


class ProbeJobConfig(YardModel):
    """`yard probe` (kind "probe"): a suite, the candidates, an optional judge, the store."""

    kind: Literal["probe"]
    suite: str
    candidates: list[ProbeCandidate] = Field(min_length=1)
    # The judge block of `yard judge` (serve/judge/judge.py); null = rules only; `replay: true` = a
    # ReplayServer with deterministic fake ratings (no real judge model can run on a CPU machine).
    judge: JudgeEndpoint | None = None
    conditions: list[Condition] = Field(default_factory=lambda: list(CONDITIONS), min_length=1)
    max_concurrency: int = Field(4, ge=1)  # requests in flight per candidate
    max_retries: int = Field(3, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _unique(self) -> "ProbeJobConfig":
        ids = [c.id for c in self.candidates]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"candidate id {dup[0]!r} appears more than once")
        return self


# --- asking ------------------------------------------------------------------------------------

def candidate_client(cand: ProbeCandidate, *, max_concurrency: int = 4, max_retries: int = 3,
                     timeout_s: float = 120.0) -> ChatClient:
    # No cache for candidates: a re-trained model served under the same id must be asked again.
    return ChatClient(cand.base_url, cand.served_model, api_key_env=cand.api_key_env,
                      max_concurrency=max_concurrency, max_retries=max_retries, timeout_s=timeout_s)


def converse(client: ChatClient, suite: ProbeSuite, probes: list[Probe], conditions, params: dict) -> list[dict]:
    """Every probe under every condition as a live conversation: turn k of all conversations goes
    out as one bounded-concurrency batch, each answer appended before turn k+1. One dict per
    (condition, probe): {"probe", "group", "condition", "messages", "replies"}."""
    convs = []
    for condition in conditions:
        start = [{"role": "system", "content": suite.persona.system_prompt}] if condition == "with_system" else []
        convs += [{"probe": p.id, "group": p.group, "condition": condition, "turns": p.turns,
                   "messages": list(start), "replies": []} for p in probes]
    for k in range(max(len(p.turns) for p in probes)):
        active = [c for c in convs if len(c["turns"]) > k]
        batch = [c["messages"] + [{"role": "user", "content": c["turns"][k]}] for c in active]
        for conv, msgs, reply in zip(active, batch, client.chat_many(batch, **params)):
            conv["messages"] = msgs + [{"role": "assistant", "content": reply.text}]
            conv["replies"].append(reply.text)
    for c in convs:
        del c["turns"]
    return convs


def grade(conv: dict, expected: list[str]) -> dict:
    """Rule outcomes of one conversation: a rule fails when any turn's reply fails it (the reason
    names the turn); fact_mismatch reads the final reply only."""
    rules: dict[str, dict] = {}
    last = len(conv["replies"]) - 1
    for turn, reply in enumerate(conv["replies"]):
        for r in check_reply(reply, expected if turn == last else ()):
            prefix = f"turn {turn + 1}: " if last else ""
            if r.rule not in rules or (rules[r.rule]["passed"] and not r.passed):
                rules[r.rule] = {"passed": r.passed, "reason": prefix + r.reason if r.reason else ""}
    final = conv["replies"][-1]
    return {**conv, "expected": expected, "matched": matched_answers(final, expected) if expected else [],
            "rules": rules, "passed": all(r["passed"] for r in rules.values())}


def fact_consistency(records: list[dict], suite: ProbeSuite, condition: str) -> dict[str, dict]:
    """Per fact, across its phrasings: "consistent" (every answer holds an expected answer),
    "inconsistent" (some do, some do not), "wrong" (none does)."""
    out = {}
    for fact in suite.persona.facts:
        ids = [p.id for p in suite.all_probes() if p.fact == fact.key]
        answers = [r for r in records if r["condition"] == condition and r["probe"] in ids]
        right = sum(bool(r["matched"]) for r in answers)
        status = "consistent" if right == len(answers) else "wrong" if right == 0 else "inconsistent"
        out[fact.key] = {"status": status, "phrasings": len(answers), "right": right,
                         "answers": [r["replies"][-1] for r in answers]}
    return out


# --- judging -----------------------------------------------------------------------------------

def judge_messages(suite: ProbeSuite, record: dict) -> list[dict]:
    """The rubric prompt for one conversation (the suite's `judge_prompt` when it has one)."""
    persona = suite.persona
    facts = "\n".join(f"- {f.key}: {f.question} -> {' / '.join(f.expected)}" for f in persona.facts) or "(none)"
    shown = [m for m in record["messages"] if m["role"] != "system"]
    conversation = "\n".join(f"{'User' if m['role'] == 'user' else 'Model'}: {m['content']}" for m in shown)
    prompt = (suite.judge_prompt or JUDGE_PROMPT).format(
        persona=persona.name, description=persona.description or persona.system_prompt, facts=facts,
        system_prompt=persona.system_prompt, conversation=conversation, condition=CONDITION_TEXT[record["condition"]])
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def judge_records(judge: ChatClient, suite: ProbeSuite, records: list[dict], params: dict) -> None:
    """Adds "judgment" and "rating" (None when unparseable) to each record; a judge that fails
    for good marks the records with "judge_error" instead of stopping the run."""
    def one(record: dict) -> None:
        try:
            text = judge.chat(judge_messages(suite, record), **params).text
        except ChatError as exc:  # one lost judgment must not cost the others (chat_many would)
            log.error("judge failed on %s/%s: %s", record["condition"], record["probe"], exc)
            record.update(judgment=None, rating=None, judge_error=str(exc))
            return
        record.update(judgment=text, rating=parse_rating(text), judge_error=None)

    with ThreadPoolExecutor(max_workers=max(1, judge.max_concurrency), thread_name_prefix="probe-judge") as pool:
        list(pool.map(one, records))


# --- summarising -------------------------------------------------------------------------------

def _rate(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def summarize(records: list[dict], suite: ProbeSuite, condition: str, judged: bool) -> dict:
    """Pass rates of one candidate under one condition: overall, per rule, per group; facts; judge."""
    rows = [r for r in records if r["condition"] == condition]
    rules = {}
    for rule in RULES:
        applies = [r for r in rows if rule in r["rules"]]
        ok = sum(r["rules"][rule]["passed"] for r in applies)
        rules[rule] = {"applies": len(applies), "passed": ok, "pass_rate": _rate(ok, len(applies))}
    groups = {}
    for group in GROUPS:
        members = [r for r in rows if r["group"] == group]
        ok = sum(r["passed"] for r in members)
        groups[group] = {"probes": len(members), "passed": ok, "pass_rate": _rate(ok, len(members))}
    passed = sum(r["passed"] for r in rows)
    out = {"probes": len(rows), "passed": passed, "pass_rate": _rate(passed, len(rows)), "rules": rules,
           "groups": groups, "facts": fact_consistency(records, suite, condition), "judge": None}
    if judged:
        ratings = [r["rating"] for r in rows if r.get("rating") is not None]
        errors = sum(1 for r in rows if r.get("judge_error"))
        out["judge"] = {"mean": round(sum(ratings) / len(ratings), 3) if ratings else None, "scored": len(ratings),
                        "unparseable": len(rows) - len(ratings) - errors, "errors": errors}
    return out


def probe_candidate(suite: ProbeSuite, cand: ProbeCandidate, client: ChatClient, judge: ChatClient | None,
                    conditions=CONDITIONS, judge_params: dict | None = None) -> tuple[dict, list[dict]]:
    """Probe one candidate: (its summary, its graded records). A candidate that cannot be asked
    gets an "error" and no records."""
    head = {"id": cand.id, "model": cand.served_model, "base_url": cand.base_url, "group": cand.group,
            "variant": cand.variant}
    probes = suite.all_probes()
    try:
        convs = converse(client, suite, probes, conditions, {**suite.params, **cand.params})
    except ChatError as exc:
        log.error("candidate %s failed: %s", cand.id, exc)
        return {**head, "error": str(exc), "conditions": {}}, []
    by_id = {p.id: p for p in probes}
    records = [{"candidate": cand.id, **grade(c, suite.expected_for(by_id[c["probe"]]))} for c in convs]
    if judge is not None:
        judge_records(judge, suite, records, judge_params or {"temperature": 0.0, "max_tokens": 512})
    conds = {c: summarize(records, suite, c, judge is not None) for c in conditions}
    return {**head, "error": None, "conditions": conds}, records


def run_probes(suite: ProbeSuite, candidates: list[ProbeCandidate], judge_client: ChatClient | None = None,
               store=None, *, conditions=CONDITIONS, clients: dict[str, ChatClient] | None = None,
               judge_params: dict | None = None, out_dir: str | Path | None = None, reporter=None,
               cost_line: str = "") -> dict:
    """Probe every candidate, write the report (ending with `cost_line` when given), publish it in
    `store` (kind "probe", model id = suite name) when given. `clients` maps candidate ids to ready ChatClients (the Serve app's
    own); the rest are built from the candidates. Returns the summary: {"suite", "status",
    "candidates": [{id, model, group, variant, error, conditions: {condition: {pass_rate, rules,
    groups, facts, judge}}}], "report", "files", "run"}."""
    from serve.probes.probe_report import write_report

    if store is None and out_dir is None:
        raise ValueError("run_probes: give a store or an out_dir, or the report is lost")
    clients = dict(clients or {})
    results, records = [], []
    for cand in candidates:
        if reporter is not None:
            reporter.phase("probing", cand.id)
        own = cand.id not in clients
        client = candidate_client(cand) if own else clients[cand.id]
        try:
            summary, recs = probe_candidate(suite, cand, client, judge_client, conditions, judge_params)
        finally:
            if own:
                client.close()
        results.append(summary)
        records += recs
        if reporter is not None:
            reporter.advance(item=cand.id)
    judge_failed = any(r.get("judge_error") for r in records)
    summary = {"suite": suite.name, "persona": suite.persona.name, "conditions": list(conditions),
               "judge": judge_client.model if judge_client is not None else None, "candidates": results,
               "status": "failed" if judge_failed or any(c["error"] for c in results) else "ok", "cost": cost_line}
    with contextlib.ExitStack() as stack:
        # Without out_dir the files live in the store only (a temporary folder stages them).
        out = Path(out_dir) if out_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yard-probe-")))
        paths = write_report(summary, records, suite, out)
        summary["files"] = {name: str(p) for name, p in paths.items()}
        summary["report"] = str(paths["report"])
        if store is not None:
            run = store.new_run(PROBE_KIND, suite.name)
            keys = {name: run.put_file(p.name, p) for name, p in paths.items()}
            keys["results"] = run.put_json("results.json", records)
            summary["run"] = run.prefix
            summary["report"] = store.locate(keys["report"])
            summary["files"] = {name: store.locate(k) for name, k in keys.items()}
            run.put_json("summary.json", summary)
            run.complete(status="ok", candidates=len(results), failed=sum(bool(c["error"]) for c in results))
    return summary


# --- the job -----------------------------------------------------------------------------------

def make_judge(cfg: JudgeEndpoint, store, base_url: str | None = None, model: str | None = None) -> ChatClient:
    """The judge's client; its judgments cached by content hash in the store's state area."""
    return ChatClient(base_url or cfg.base_url, model or cfg.model, api_key_env=None if base_url else cfg.api_key_env,
                      max_concurrency=cfg.max_concurrency, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                      max_backoff_s=cfg.max_backoff_s, timeout_s=cfg.timeout_s,
                      cache=ResponseCache(store, namespace="probe-judge"))


def run_probe_job(cfg: ProbeJobConfig, *, config_path: str | None = None) -> tuple[int, dict]:
    """`yard probe` without the argument parsing: (exit code, summary)."""
    from cluster.capacity.cost_report import job_cost_line
    from cluster.ops.jobs import run_job
    from cluster.store.storage import open_store
    from serve.judge.replay import ReplayServer

    suite = load_suite(cfg.suite)
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    with contextlib.ExitStack() as stack:
        judge, judge_params = None, None
        if cfg.judge is not None:
            judge_params = {"temperature": cfg.judge.temperature, "max_tokens": cfg.judge.max_tokens}
            if cfg.judge.replay:
                # No real judge model can run here: a replay server answers with deterministic
                # "[[k]]" judgments, labelled as replayed, so the pipeline runs end to end.
                server = stack.enter_context(ReplayServer(default="judge", models=["replay-judge"]))
                log.warning("judge: replayed judgments from %s (not a real judge model: scores measure nothing)", server.url)
                judge = stack.enter_context(make_judge(cfg.judge, store, server.url, "replay-judge"))
            else:
                judge = stack.enter_context(make_judge(cfg.judge, store))
        clients = {c.id: stack.enter_context(candidate_client(
            c, max_concurrency=cfg.max_concurrency, max_retries=cfg.max_retries, timeout_s=cfg.timeout_s))
            for c in cfg.candidates}
        with run_job("probe", cfg, store, config_path=config_path) as job:
            reporter = job.reporter("probe", total=len(cfg.candidates))
            summary = run_probes(suite, cfg.candidates, judge, store, conditions=tuple(cfg.conditions),
                                 clients=clients, judge_params=judge_params, reporter=reporter,
                                 cost_line=job_cost_line(job, None, none_booked=ENDPOINTS_ONLY))
            job.summary.update({k: summary[k] for k in ("suite", "status", "report", "run")})
            job.add_artifact(summary["run"])
            if summary["status"] != "ok":
                job.fail("; ".join(f"{c['id']}: {c['error']}" for c in summary["candidates"] if c["error"])
                         or "some judgments failed (see the report)")
    return (0 if summary["status"] == "ok" else 1), summary


def main(argv: list[str]) -> int:
    parser = job_parser("yard probe", "persona probes against OpenAI-compatible candidates",
                        config_help="a kind: probe config")
    args = parser.parse_intermixed_args(argv)
    cfg = job_config(args, ProbeJobConfig)
    code, summary = run_probe_job(cfg, config_path=args.config)
    for cand in summary["candidates"]:
        if cand["error"]:
            print(f"{cand['id']:<24} FAILED: {cand['error']}")
            continue
        cells = []
        for cond, s in cand["conditions"].items():
            judge = s["judge"]["mean"] if s["judge"] else None
            cells.append(f"{cond} {s['pass_rate']:.0%}" + (f" judge {judge:.1f}" if judge is not None else ""))
        print(f"{cand['id']:<24} " + "   ".join(cells))
    print(f"report: {summary['report']}")
    return code


def demo_probes(store, base_url: str, models: list[str], *, api_key_env: str | None = None,
                judge: JudgeEndpoint | None = None, quick: bool = True) -> dict:
    """`yard demo`'s probe step: the shipped suite against `models` served at `base_url` (the
    Serve app), with the replay judge unless `judge` names a real one. Returns {"status",
    "report", "summary"} as the demo table expects. The toy zoo was never fine-tuned on the
    persona: the report is the point, its numbers are not."""
    cfg = ProbeJobConfig(
        kind="probe", suite=str(DEMO_SUITE),
        storage=StorageConfig(uri=store.uri, endpoint_url=getattr(store, "endpoint_url", None)),
        candidates=[ProbeCandidate(id=m, base_url=base_url, model=m, api_key_env=api_key_env, group="zoo", variant=m,
                                   params={"max_tokens": 48 if quick else 200,
                                           "chat_template_kwargs": {"enable_thinking": False}}) for m in models],
        judge=judge or JudgeEndpoint(replay=True))
    try:
        code, summary = run_probe_job(cfg)
    except (ChatError, ConfigError) as exc:
        return {"status": "failed", "report": None, "error": str(exc)}
    return {"status": "ok" if code == 0 else "failed", "report": summary["report"], "summary": summary}
