"""A KoMT-style judge benchmark inside a sweep: the candidate answers both turns of each question
here (its generation counts toward sec_per_token like every other benchmark), then an
OpenAI-compatible judge grades each turn; perf = mean rating / 10. The details keep each turn's
rating, so a sweep scores a candidate against its baseline over the turns rated for both
(`aligned_perf`).

The judge pieces (prompts in FastChat's shapes, rating parsing, the retrying client, the replay
judge) live in serve/, the Serve issue's package; they are imported when a judge benchmark runs,
never when tune/ is imported, so neither package imports the other at import time.

    benchmarks:
      - {name: komt, task: judge, source: ../komt_sample.jsonl,
         judge: {base_url: https://judge.example/v1, model: gpt-4o, api_key_env: JUDGE_API_KEY}}
"""
from __future__ import annotations

import logging
from dataclasses import asdict

from pydantic import ValidationError

from cluster.config import ConfigError, format_validation_error

log = logging.getLogger(__name__)
# Endpoint fields that never change a rating (how hard and how often to ask), left out of cache keys.
_OPERATIONAL = {"api_key_env", "max_concurrency", "max_retries", "backoff_s", "max_backoff_s", "timeout_s"}


def load_judge_items(source: str, name: str, judge: dict | None) -> list[dict]:
    """KoMT-Bench-schema questions as plain dicts, after checking the judge endpoint config."""
    from serve.judge.judge import JudgeEndpoint
    from serve.judge.judge_prompts import load_questions

    if not judge:
        raise ConfigError(f"benchmarks.{name}.judge: a judge endpoint is required for task judge "
                          f"(base_url + model, or replay: true)")
    try:
        JudgeEndpoint.model_validate(judge)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(f"benchmarks.{name}.judge", exc)) from None
    return [asdict(q) for q in load_questions(source)]


def _render(tokenizer, messages: list[dict], spec, model_id: str) -> str:
    from cluster.models.loading import chat_prompt

    if spec is not None:
        return chat_prompt(tokenizer, messages, spec, model_id)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run_judge_benchmark(model, tokenizer, bench, gen, *, spec, model_id: str) -> tuple[float, dict]:
    """(perf in [0, 1], details) of one judge benchmark. Unparseable judgments and failed judge
    calls are counted in the details and left out of the mean, never scored 0; a benchmark where
    no judgment parsed is an error (a Score built on nothing would look like a real one)."""
    from actors.generation import generate_for
    from serve.client import ChatClient
    from serve.judge.judge import JudgeEndpoint, judge_single
    from serve.judge.judge_prompts import Question, builtin_prompts
    from serve.judge.replay import ReplayServer

    questions = [Question(q["question_id"], q["category"], tuple(q["turns"]), tuple(q.get("reference") or ()))
                 for q in bench.items]
    first = generate_for(model)(model, tokenizer, [_render(tokenizer, [{"role": "user", "content": q.turns[0]}], spec,
                                                        model_id) for q in questions], gen)
    two = [i for i, q in enumerate(questions) if len(q.turns) > 1]
    convs = [[{"role": "user", "content": questions[i].turns[0]},
              {"role": "assistant", "content": first.responses[i]},
              {"role": "user", "content": questions[i].turns[1]}] for i in two]
    second = generate_for(model)(model, tokenizer, [_render(tokenizer, c, spec, model_id) for c in convs], gen)
    replies = {q.question_id: {"turns": [first.responses[i]], "error": None} for i, q in enumerate(questions)}
    for j, i in enumerate(two):
        replies[questions[i].question_id]["turns"].append(second.responses[j])

    endpoint = JudgeEndpoint.model_validate(bench.spec.judge)
    replay = ReplayServer(default="judge").start() if endpoint.replay else None
    try:
        client = ChatClient(replay.url if replay else endpoint.base_url, endpoint.model or "replay-judge",
                            api_key_env=endpoint.api_key_env, max_concurrency=endpoint.max_concurrency,
                            max_retries=endpoint.max_retries, backoff_s=endpoint.backoff_s,
                            max_backoff_s=endpoint.max_backoff_s, timeout_s=endpoint.timeout_s)
        records = judge_single(client, builtin_prompts(bench.spec.judge_language), questions, {model_id: replies},
                               {"temperature": endpoint.temperature, "max_tokens": endpoint.max_tokens},
                               bench.spec.language_penalty)
    finally:
        if replay is not None:
            replay.stop()
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise RuntimeError(f"benchmark {bench.spec.name}: no judgment could be parsed "
                           f"({len(records)} asked; statuses {sorted({r['status'] for r in records})})")
    by_turn = {t: [r["score"] for r in ok if r["turn"] == t] for t in (1, 2)}
    detail = {
        "metric": "judge_score/10", "judgments": len(records), "ok": len(ok),
        "unparseable": sum(r["status"] == "unparseable" for r in records),
        "judge_failed": sum(r["status"] == "judge_failed" for r in records),
        "turn1_mean": round(sum(by_turn[1]) / len(by_turn[1]), 4) if by_turn[1] else None,
        "turn2_mean": round(sum(by_turn[2]) / len(by_turn[2]), 4) if by_turn[2] else None,
        "replayed_judge": endpoint.replay,
        "generated_tokens": sum(first.new_tokens) + sum(second.new_tokens),
        "generation_seconds": first.seconds + second.seconds,
        "samples": [{"question": q.turns[0][:200], "prediction": replies[q.question_id]["turns"][0][:300]}
                    for q in questions[:3]],
        # every judged turn's score (None: not rated), so a candidate and its baseline can be
        # compared over the turns rated for both (`aligned_perf`)
        "per_item": {f"{r['question_id']}:{r['turn']}": r["score"] if r["status"] == "ok" else None
                     for r in records},
    }
    if endpoint.replay:
        log.warning("benchmark %s: replayed judge: its ratings are deterministic fakes, not a measurement",
                    bench.spec.name)
    return sum(r["score"] for r in ok) / len(ok) / 10.0, detail


def judge_key(spec) -> dict:
    """What of a judge benchmark's spec changes its ratings, for the baseline cache key: the judge
    endpoint as validated (replay or URL + model, temperature, max_tokens), the prompt language
    and the language penalty."""
    from serve.judge.judge import JudgeEndpoint

    endpoint = JudgeEndpoint.model_validate(spec.judge).model_dump(exclude=_OPERATIONAL)
    return {"endpoint": endpoint, "judge_language": spec.judge_language, "language_penalty": spec.language_penalty}


def aligned_perf(result, baseline) -> tuple[float, float, dict[str, int]]:
    """(candidate perf_mean, baseline perf_mean, {judge benchmark: turns left out}) of two
    `tune.eval.evaluate.EvalResult`s, with each judge benchmark's perf recomputed, for both, over the
    turns rated for both: a turn one judgment failed to parse for is left out of both means (and
    counted), so neither model is scored on questions the other was not. Other benchmarks, and
    judge results without per-item ratings (or with no turn rated for both), keep their own perf.
    Only their `perf` and `details` are read: tune.eval.evaluate imports this module, not the reverse."""
    perf, base_perf, left_out = dict(result.perf), dict(baseline.perf), {}
    for name in perf.keys() & base_perf.keys():
        mine = (result.details.get(name) or {}).get("per_item")
        theirs = (baseline.details.get(name) or {}).get("per_item")
        if mine is None or theirs is None:
            continue
        both = [k for k in mine.keys() & theirs.keys() if mine[k] is not None and theirs[k] is not None]
        if not both:
            log.warning("benchmark %s: no judged turn was rated for both the candidate and the baseline; "
                        "comparing their own means", name)
            continue
        left_out[name] = len(mine.keys() | theirs.keys()) - len(both)
        perf[name] = sum(mine[k] for k in both) / len(both) / 10.0
        base_perf[name] = sum(theirs[k] for k in both) / len(both) / 10.0
    return sum(perf.values()) / len(perf), sum(base_perf.values()) / len(base_perf), left_out
