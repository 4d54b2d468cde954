"""KoMT-Bench-style LLM-judge scoring of candidate models behind OpenAI-compatible endpoints.

Each candidate answers every question's turns (turn 2 sees its own turn-1 answer); a judge model
(any OpenAI-compatible endpoint: a model of this Serve app or an external API) grades them with
FastChat-shaped prompts (`serve/judge/judge_prompts.py`). Single mode reports turn-1, turn-2 and
overall means, a per-category table and the count of unparseable judgments (never dropped,
never scored 0); pairwise mode judges both answer orders and counts a disagreement as a tie.
Results go to the store as kind "judge" (results.json, answers.json, judgments.json, report.md,
one chart per candidate and a comparison chart).

    yard judge configs/judge.demo.yaml
    yard judge my.yaml mode=pairwise judge.max_concurrency=2

The KoMT non-Korean penalty (`language_penalty: true`): a rating r of an answer to a Korean
question becomes sqrt(r) when the answer is not Korean. The check is offline: Hangul must be at
least HANGUL_MIN_RATIO of the answer's letters, code blocks left out; an answer with fewer than
MIN_LETTERS letters (a bare number) is never penalised.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import ConfigError, StorageConfig, YardModel, job_config, job_parser
from cluster.ops.jobs import run_job
from cluster.store.storage import ArtifactStore, open_store
from serve.client import ChatClient, ChatError, ResponseCache
from serve.judge.judge_prompts import (Question, builtin_prompts, load_prompt_file, load_questions, pair_messages,
                                 parse_rating, parse_verdict, single_messages)

log = logging.getLogger(__name__)

JUDGE_KIND = "judge"
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "judge.demo.yaml"
HANGUL_MIN_RATIO = 0.3
MIN_LETTERS = 10
# MT-Bench's answer temperatures per category (creative categories sample, exact ones do not).
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
# Why `yard judge` and `yard probe` book no ledger rows: they call endpoints, they start none; the
# Serve app behind them (`yard serve`, `yard demo`) is a job of its own and books its replicas.
ENDPOINTS_ONLY = "it calls endpoints and starts none; the Serve app it calls books its own replicas"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


# --- config ----------------------------------------------------------------------------------------
class EndpointConfig(YardModel):
    """An OpenAI-compatible endpoint ("http://host:port/v1") and the model id to ask for."""

    base_url: str | None = None
    model: str | None = None
    # Name of the environment variable holding the API key (keys never live in config files).
    api_key_env: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL such as http://127.0.0.1:8000/v1")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("expected an environment variable name, not the key itself")
        return v


class CandidateEndpoint(EndpointConfig):
    """A candidate to score: `id` names it in reports."""

    id: str = Field(min_length=1)
    base_url: str
    model: str = Field(min_length=1)


class JudgeEndpoint(EndpointConfig):
    """The judge. `replay: true` starts a ReplayServer as the judge (deterministic fake ratings:
    a real judge model cannot run on a CPU machine; such scores measure nothing)."""

    replay: bool = False
    max_concurrency: int = Field(4, ge=1)
    max_retries: int = Field(6, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    max_tokens: int = Field(2048, ge=1)
    temperature: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _needs_url(self) -> "JudgeEndpoint":
        if not self.replay and (not self.base_url or not self.model):
            raise ValueError("base_url and model are required unless replay: true")
        return self


class AnswerConfig(YardModel):
    """How candidates are asked: temperature null = MT-Bench's per-category temperatures."""

    max_tokens: int = Field(512, ge=1)
    temperature: float | None = Field(None, ge=0)
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(2, ge=0)
    chat_template_kwargs: dict = Field(default_factory=dict)


class JudgeConfig(YardModel):
    kind: Literal["judge"] = "judge"
    name: str = Field("komt-sample", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    candidates: list[CandidateEndpoint] = Field(min_length=1)
    judge: JudgeEndpoint = Field(default_factory=lambda: JudgeEndpoint(replay=True))
    questions: str = "configs/komt_sample.jsonl"
    limit: int | None = Field(None, ge=1)  # first N questions only (quick runs)
    mode: Literal["single", "pairwise"] = "single"
    language_penalty: bool = False
    prompt_language: Literal["en", "ko"] = "en"
    # A FastChat-format judge_prompts.jsonl to use instead of the built-in prompts.
    judge_prompts: str | None = None
    # Judgment cache directory; null keeps it in the store's state area (shared across machines).
    cache_dir: str | None = None
    answer: AnswerConfig = Field(default_factory=AnswerConfig)

    @model_validator(mode="after")
    def _check(self) -> "JudgeConfig":
        ids = [c.id for c in self.candidates]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise ValueError(f"candidate id {dup!r} is used twice (ids must be unique)")
        if self.mode == "pairwise" and len(ids) < 2:
            raise ValueError("pairwise mode needs at least 2 candidates")
        return self


# --- language check ----------------------------------------------------------------------------------
def hangul_ratio(text: str) -> float | None:
    """Hangul share of the letters in `text` (code left out); None below MIN_LETTERS letters."""
    letters = [c for c in _CODE.sub(" ", text or "") if c.isalpha()]
    if len(letters) < MIN_LETTERS:
        return None
    hangul = sum(1 for c in letters if "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f")
    return hangul / len(letters)


def is_korean(text: str) -> bool:
    """True when the text reads as Korean (or is too short to tell)."""
    ratio = hangul_ratio(text)
    return ratio is None or ratio >= HANGUL_MIN_RATIO


# --- answering -------------------------------------------------------------------------------------
def _candidate_client(c: CandidateEndpoint, answer: AnswerConfig) -> ChatClient:
    return ChatClient(c.base_url, c.model, api_key_env=c.api_key_env, max_concurrency=answer.max_concurrency,
                      max_retries=answer.max_retries, timeout_s=answer.timeout_s)


def generate_answers(client: ChatClient, questions: list[Question], answer: AnswerConfig) -> dict[str, dict]:
    """{question_id: {"turns": [answer per turn], "error": str|None}}; turn 2 sees turn 1's answer.
    A failed turn records its one-line error; its later turns are not asked."""
    out = {q.question_id: {"turns": [], "error": None} for q in questions}
    convs = {q.question_id: [] for q in questions}
    for turn in range(max(len(q.turns) for q in questions)):
        todo = [q for q in questions if len(q.turns) > turn and out[q.question_id]["error"] is None]
        groups: dict[float, list[Question]] = {}
        for q in todo:
            temp = answer.temperature if answer.temperature is not None else CATEGORY_TEMPERATURE.get(q.category, 0.7)
            groups.setdefault(temp, []).append(q)
        for temp, qs in groups.items():
            for q in qs:
                convs[q.question_id].append({"role": "user", "content": q.turns[turn]})
            params = {"max_tokens": answer.max_tokens, "temperature": temp}
            if answer.chat_template_kwargs:
                params["chat_template_kwargs"] = answer.chat_template_kwargs
            replies = client.chat_many([convs[q.question_id] for q in qs], return_errors=True, **params)
            for q, reply in zip(qs, replies):
                if isinstance(reply, ChatError):
                    out[q.question_id]["error"] = f"turn {turn + 1}: {reply}"
                else:
                    out[q.question_id]["turns"].append(reply.text)
                    convs[q.question_id].append({"role": "assistant", "content": reply.text})
    return out


# --- judging ---------------------------------------------------------------------------------------
def _judge_all(judge: ChatClient, jobs: list[dict], params: dict, parses: Callable[[str], object]) -> None:
    """Send every job's `messages` to the judge (bounded concurrency); fill `judgment`/`error`/`cached`.
    Only judgments `parses` reads go into the judge's cache: an unparseable one is asked again next run."""
    replies = judge.chat_many([j["messages"] for j in jobs], return_errors=True,
                              keep=lambda text: parses(text) is not None, **params)
    for job, reply in zip(jobs, replies):
        if isinstance(reply, ChatError):
            job.update(judgment=None, error=str(reply), cached=False)
        else:
            job.update(judgment=reply.text, error=None, cached=reply.cached)


def judge_single(judge: ChatClient, prompts: dict, questions: list[Question], answers: dict[str, dict],
                 params: dict, language_penalty: bool) -> list[dict]:
    """One record per (candidate, question, turn): rating, score (after any penalty) and status
    ok | unparseable | judge_failed | no_answer."""
    records, jobs = [], []
    for cid, per_q in answers.items():
        for q in questions:
            got = per_q[q.question_id]["turns"]
            for turn in range(1, len(q.turns) + 1):
                rec = {"candidate": cid, "question_id": q.question_id, "category": q.category, "turn": turn,
                       "rating": None, "score": None, "penalized": False}
                records.append(rec)
                if len(got) < turn:
                    rec.update(status="no_answer", error=per_q[q.question_id]["error"])
                    continue
                rec["prompt"], rec["messages"] = single_messages(prompts, q, got, turn)
                # The penalty is KoMT's rule for Korean questions; an English question may get an English answer.
                ratio = hangul_ratio(q.turns[turn - 1])
                rec["korean_question"] = ratio is not None and ratio >= HANGUL_MIN_RATIO
                jobs.append(rec)
    _judge_all(judge, jobs, params, parse_rating)
    for rec in jobs:
        if rec["judgment"] is None:
            rec["status"] = "judge_failed"
            continue
        rating = parse_rating(rec["judgment"])
        if rating is None:
            rec["status"] = "unparseable"
            continue
        rec.update(status="ok", rating=rating, score=rating)
        answer = answers[rec["candidate"]][rec["question_id"]]["turns"][rec["turn"] - 1]
        if language_penalty and rec["korean_question"] and not is_korean(answer):
            rec.update(score=math.sqrt(rating), penalized=True)
    return records


def judge_pairwise(judge: ChatClient, prompts: dict, questions: list[Question], answers: dict[str, dict],
                   params: dict) -> list[dict]:
    """One record per (pair, question, turn) with both orders' verdicts; the winner is the
    candidate both orders agree on, a tie when they disagree ("inconsistent") or say C."""
    records, jobs = [], []
    for a, b in combinations(list(answers), 2):
        for q in questions:
            ga, gb = answers[a][q.question_id]["turns"], answers[b][q.question_id]["turns"]
            for turn in range(1, len(q.turns) + 1):
                rec = {"a": a, "b": b, "question_id": q.question_id, "category": q.category, "turn": turn,
                       "winner": None}
                records.append(rec)
                if len(ga) < turn or len(gb) < turn:
                    rec["status"] = "no_answer"
                    continue
                rec["prompt"], m1 = pair_messages(prompts, q, ga, gb, turn)
                _, m2 = pair_messages(prompts, q, gb, ga, turn)
                rec["orders"] = [{"messages": m1}, {"messages": m2}]
                jobs.extend(rec["orders"])
    _judge_all(judge, jobs, params, parse_verdict)
    for rec in records:
        if "orders" not in rec:
            continue
        first, second = rec["orders"]
        if first["judgment"] is None or second["judgment"] is None:
            rec["status"] = "judge_failed"
            continue
        v1, v2 = parse_verdict(first["judgment"]), parse_verdict(second["judgment"])
        rec["verdicts"] = [v1, v2]
        if v1 is None or v2 is None:
            rec["status"] = "unparseable"
            continue
        # Map both to candidate ids: in the second order, A is candidate b.
        w1 = {"A": rec["a"], "B": rec["b"], "C": "tie"}[v1]
        w2 = {"A": rec["b"], "B": rec["a"], "C": "tie"}[v2]
        rec["status"] = "ok" if w1 == w2 else "inconsistent"
        rec["winner"] = w1 if w1 == w2 else "tie"
    return records


# --- running -----------------------------------------------------------------------------------------
@dataclass
class JudgeResult:
    """What a judge run produced: per-candidate summary, store keys, and request counts."""

    summary: dict[str, dict]
    records: list[dict]
    answers: dict[str, dict]
    run_prefix: str | None = None
    report: str | None = None  # where a person finds report.md (path or s3:// URI)
    charts: dict[str, str] = field(default_factory=dict)
    judge_requests: int = 0


def _safe(cid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", cid)


def judge_candidates(candidates: list[CandidateEndpoint], judge: ChatClient, questions: list[Question], *,
                     mode: str = "single", language_penalty: bool = False, prompts: dict | None = None,
                     answer: AnswerConfig | None = None, judge_params: dict | None = None,
                     store: ArtifactStore | None = None, name: str = "judge", replayed_judge: bool = False,
                     questions_path: str = "", cost_line: str = "") -> JudgeResult:
    """Answer every question with every candidate, judge the answers, summarise, and (with a
    store) write results.json, answers.json, judgments.json, report.md (ending with `cost_line`
    when given) and the charts as one run of kind "judge" named `name`."""
    from serve.judge.judge_report import candidate_chart, comparison_chart, markdown_report, summarize_pairwise, summarize_single

    answer = answer or AnswerConfig()
    prompts = prompts or builtin_prompts("en")
    params = judge_params or {"temperature": 0.0, "max_tokens": 2048}
    answers = {}
    for c in candidates:
        with _candidate_client(c, answer) as client:
            answers[c.id] = generate_answers(client, questions, answer)
        failed = sum(a["error"] is not None for a in answers[c.id].values())
        if failed:
            log.warning("candidate %s: %d of %d questions got no full answer", c.id, failed, len(questions))
    before = judge.requests_sent
    ids = [c.id for c in candidates]
    if mode == "single":
        records = judge_single(judge, prompts, questions, answers, params, language_penalty)
        summary = summarize_single(records, ids)
    else:
        records = judge_pairwise(judge, prompts, questions, answers, params)
        summary = summarize_pairwise(records, ids)
    result = JudgeResult(summary, records, answers, judge_requests=judge.requests_sent - before)
    if store is None:
        return result
    run = store.new_run(JUDGE_KIND, name)
    charts = {cid: f"chart-{_safe(cid)}.png" for cid in ids}
    for cid in ids:
        run.put_bytes(charts[cid], candidate_chart(cid, summary[cid], mode, replayed_judge))
    if len(ids) > 1:
        charts["comparison"] = "comparison.png"
        run.put_bytes("comparison.png", comparison_chart(summary, mode, replayed_judge))
    run.put_json("answers.json", answers)
    run.put_json("judgments.json", records)
    run.put_json("results.json", {"mode": mode, "judge_model": judge.model, "replayed_judge": replayed_judge,
                                  "language_penalty": language_penalty, "questions": questions_path,
                                  "n_questions": len(questions), "summary": summary,
                                  "judge_requests": result.judge_requests})
    report = markdown_report(summary, mode=mode, name=name, questions_path=questions_path, n_questions=len(questions),
                             judge_model=judge.model, replayed=replayed_judge, language_penalty=language_penalty,
                             charts=charts, cost_line=cost_line)
    key = run.put_bytes("report.md", report.encode("utf-8"))
    run.complete(mode=mode, candidates=ids, replayed_judge=replayed_judge)
    result.run_prefix, result.report = run.prefix, store.locate(key)
    result.charts = {cid: store.locate(f"{run.prefix}/{f}") for cid, f in charts.items()}
    return result


def _judge_client(cfg: JudgeConfig, store: ArtifactStore, base_url: str, model: str) -> ChatClient:
    j = cfg.judge
    cache = ResponseCache(cfg.cache_dir, namespace=_safe(model)) if cfg.cache_dir else ResponseCache(store, _safe(model))
    return ChatClient(base_url, model, api_key_env=j.api_key_env, max_concurrency=j.max_concurrency,
                      max_retries=j.max_retries, backoff_s=j.backoff_s, max_backoff_s=j.max_backoff_s,
                      timeout_s=j.timeout_s, cache=cache)


def run_judge(cfg: JudgeConfig, config_path: str | None = None) -> tuple[int, JudgeResult]:
    """`yard judge`: the whole run inside a job record; exit code 1 when any judgment is missing
    or none parsed (a report of only unparseable judgments measures nothing)."""
    from cluster.capacity.cost_report import job_cost_line
    from serve.judge.replay import ReplayServer

    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    questions = load_questions(cfg.questions)[: cfg.limit]
    prompts = load_prompt_file(cfg.judge_prompts) if cfg.judge_prompts else builtin_prompts(cfg.prompt_language)
    replay = ReplayServer(default="judge").start() if cfg.judge.replay else None
    try:
        if replay is not None:
            log.warning("judge: replayed (no real judge configured; a real judge model cannot run here): "
                        "scores are deterministic stand-ins, not measurements")
        base_url, model = (replay.url, "replay-judge") if replay else (cfg.judge.base_url, cfg.judge.model)
        with run_job("judge", cfg, store, config_path=config_path) as job, \
                _judge_client(cfg, store, base_url, model) as judge:
            result = judge_candidates(
                cfg.candidates, judge, questions, mode=cfg.mode, language_penalty=cfg.language_penalty,
                prompts=prompts, answer=cfg.answer, store=store, name=cfg.name, replayed_judge=replay is not None,
                judge_params={"temperature": cfg.judge.temperature, "max_tokens": cfg.judge.max_tokens},
                questions_path=cfg.questions, cost_line=job_cost_line(job, None, none_booked=ENDPOINTS_ONLY))
            job.add_artifact(f"{result.run_prefix}/report.md")
            missing = sum(s["n_judge_failed"] + s["n_no_answer"] for s in result.summary.values())
            # pairwise "inconsistent": both orders parsed, they only disagreed
            parsed = sum(r["status"] in ("ok", "inconsistent") for r in result.records)
            job.summary = {"report": result.report, "judge_requests": result.judge_requests}
            if missing:
                job.fail(f"{missing} judgment(s) missing (judge failed or no answer); see {result.report}")
            elif not parsed:
                job.fail(f"no judgment parsed: all {len(result.records)} unparseable; see {result.report}")
    finally:
        if replay is not None:
            replay.stop()
    return (1 if missing or not parsed else 0), result


def _print_summary(result: JudgeResult, mode: str) -> None:
    for cid, s in result.summary.items():
        if mode == "single":
            print(f"{cid:24s} turn1 {s['turn_1']}  turn2 {s['turn_2']}  overall {s['overall']}  "
                  f"unparseable {s['n_unparseable']}  failed {s['n_judge_failed'] + s['n_no_answer']}")
        else:
            print(f"{cid:24s} win rate {s['win_rate']}  W/L/T {s['wins']}/{s['losses']}/{s['ties']}  "
                  f"unparseable {s['n_unparseable']}")
    print(f"judge requests: {result.judge_requests} (cached judgments cost none)")
    print(f"report: {result.report}")


def main(argv: list[str]) -> int:
    args = job_parser("yard judge", "KoMT-style LLM-judge scoring of candidates", DEMO_CONFIG).parse_intermixed_args(argv)
    cfg = job_config(args, JudgeConfig)
    code, result = run_judge(cfg, config_path=args.config)
    _print_summary(result, cfg.mode)
    return code


def demo_judge(store: ArtifactStore, base_url: str, models: list[str], *, api_key_env: str | None = None,
               judge: JudgeEndpoint | None = None, quick: bool = True) -> dict:
    """`yard demo`'s judge step: score `models` served at `base_url` (the Serve app) on the shipped
    sample questions with the replay judge unless `judge` names a real one. Returns
    {"status", "report", "summary"} as the demo table expects."""
    cfg = JudgeConfig(
        name="demo-judge", storage=StorageConfig(uri=store.uri, endpoint_url=getattr(store, "endpoint_url", None)),
        candidates=[CandidateEndpoint(id=m, base_url=base_url, model=m, api_key_env=api_key_env) for m in models],
        judge=judge or JudgeEndpoint(replay=True), questions=str(DEMO_CONFIG.parent / "komt_sample.jsonl"),
        limit=4 if quick else None, answer=AnswerConfig(max_tokens=48 if quick else 256, temperature=0.0),
        language_penalty=True)
    try:
        code, result = run_judge(cfg)
    except (ChatError, ConfigError) as exc:
        return {"status": "failed", "report": None, "error": str(exc)}
    return {"status": "ok" if code == 0 else "failed", "report": result.report, "summary": result.summary}
