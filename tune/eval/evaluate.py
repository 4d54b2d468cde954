"""Benchmark evaluation for the Score: MCQ accuracy, QA token F1 and sec_per_token, with a cached baseline.

MCQ items follow KMMLU-Pro / KMMLU-Redux (`question`, `options`, 1-indexed `solution`), QA items
Ko-LongRAG (`context`, `question`, `answers`; `[]` = unanswerable); `tune.eval.datasets` reads and checks
them. A generate-mode benchmark decodes greedily and parses the reply (`tune.eval.metrics`); an MCQ
benchmark in loglikelihood mode picks the option with the highest log-likelihood per character
given the question (lm-evaluation-harness `acc_norm`) and generates nothing.

sec_per_token = generation seconds / generated tokens over every generate-mode benchmark, measured
the same way for the base and each candidate (`tune.eval.baseline` keeps the base's result). The model
is a transformers model (`eval.engine: hf`) or a `cluster.engines.engine_vllm.VllmModel` (`vllm`): the same
prompts, rendered and tokenized by the same HF tokenizer, decoded greedily by either engine;
loglikelihood benchmarks need the transformers model.

    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="zoo_qa", task="qa", source="configs/bench/zoo_qa.jsonl")])
    benchmarks = load_benchmarks(cfg)                 # schema errors here, before any model loads
    result = evaluate(model, tokenizer, benchmarks, cfg)
    result.perf["zoo_qa"], result.perf_mean, result.sec_per_token
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cluster.config import ConfigError, YardModel
from cluster.engines.engine import EngineConfig
from cluster.models.registry import ModelSpec
from tune.eval.datasets import load_mcq, load_qa
from tune.eval.judge_bench import load_judge_items, run_judge_benchmark
from tune.eval.metrics import mcq_accuracy, qa_f1

log = logging.getLogger(__name__)

N_SAMPLES = 3  # predictions kept per benchmark in `details`, for reports
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_HANGUL = re.compile("[\uac00-\ud7a3]")

# on_progress(benchmark name, items done, items total), after each batch.
OnProgress = Callable[[str, int, int], None]


class BenchmarkSpec(YardModel):
    """One benchmark of an evaluation."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", description="identifier; perf.<name> in reports")
    task: Literal["mcq", "qa", "judge"]
    source: str = Field(description="local .jsonl/.json/.parquet (relative to the config's folder) or HF dataset id")
    split: str = "test"
    limit: int | None = Field(None, ge=1, description="keep the first N items (after the category filter)")
    categories: list[str] | None = Field(None, min_length=1, description="keep items whose `category` is listed")
    mode: Literal["generate", "loglikelihood"] = "generate"
    max_new_tokens: int | None = Field(None, ge=1, le=8192, description="overrides EvalConfig.max_new_tokens")
    judge: dict | None = Field(None, description="task judge: the judge endpoint (serve.judge.judge.JudgeEndpoint fields)")
    judge_language: Literal["en", "ko"] = Field("en", description="task judge: language of the judge prompts")
    language_penalty: bool = Field(False, description="task judge: KoMT's sqrt penalty for non-Korean answers")

    @model_validator(mode="after")
    def _mode_fits_task(self) -> "BenchmarkSpec":
        if self.mode == "loglikelihood" and self.task != "mcq":
            raise ValueError(f"mode: loglikelihood scores MCQ options; benchmark {self.name!r} is task "
                             f"{self.task} (allowed: generate)")
        if (self.judge is not None) != (self.task == "judge"):
            raise ValueError(f"judge: benchmark {self.name!r}: a judge endpoint goes with task judge, and only there")
        return self


class EvalConfig(YardModel):
    """What every model of a sweep is evaluated on, and how."""

    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    max_new_tokens: int = Field(64, ge=1, le=8192)
    batch_size: int = Field(16, ge=1)
    use_chat_template: bool = True
    engine: EngineConfig = Field(default_factory=EngineConfig, description="hf (any node) or vllm (CUDA GPUs)")

    @model_validator(mode="after")
    def _names_and_speed(self) -> "EvalConfig":
        names = [b.name for b in self.benchmarks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"benchmarks: duplicate name {', '.join(map(repr, dupes))} (names must be unique)")
        if all(b.mode == "loglikelihood" for b in self.benchmarks):
            raise ValueError("benchmarks: at least one must use mode generate (the Score needs sec_per_token)")
        scored = [b.name for b in self.benchmarks if b.mode == "loglikelihood"]
        if self.engine.name == "vllm" and scored:
            raise ValueError(f"benchmarks: {scored[0]!r}: mode loglikelihood needs engine hf; with engine vllm every "
                             f"benchmark generates (set its mode: generate)")
        return self


@dataclass
class Benchmark:
    """A benchmark's spec and its loaded, filtered items; `sha256` identifies the items."""

    spec: BenchmarkSpec
    items: list[dict]
    sha256: str


@dataclass
class EvalResult:
    """One model's evaluation. `perf[name]` is MCQ accuracy or QA F1 in [0, 1]; `perf_mean` (their
    mean) is the Score's perf; `sec_per_token` covers every generate-mode benchmark."""

    perf: dict[str, float]
    perf_mean: float
    generated_tokens: int
    generation_seconds: float
    sec_per_token: float
    details: dict[str, dict]
    model_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalResult":
        """The inverse of `to_dict`; a missing field is a one-line ValueError naming it."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data and n != "model_id"]
        if missing:
            raise ValueError(f"eval result: {missing[0]}: missing")
        return cls(**{n: data[n] for n in names if n in data})


# ------------------------------------------------------------------------------------------ loading

def _resolve(source: str, base_dir: str | Path | None) -> str:
    """A relative local path against `base_dir`; HF ids (org/name, no file suffix) as they are."""
    path = Path(source)
    if base_dir is None or path.is_absolute():
        return source
    local = Path(base_dir) / path
    if local.exists() or path.suffix.lower() in _LOCAL_SUFFIXES:
        return str(local)
    return source


def _items_sha256(items: list[dict]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def load_benchmarks(cfg: EvalConfig, base_dir: str | Path | None = None) -> list[Benchmark]:
    """Every benchmark of `cfg`, loaded and schema-checked now (BenchmarkSchemaError /
    BenchmarkSourceError, one line with file:line and field), then filtered by `categories` and cut
    to `limit`. A filter that keeps no item is a ConfigError naming the benchmark."""
    out = []
    for spec in cfg.benchmarks:
        source = _resolve(spec.source, base_dir)
        if spec.task == "judge":
            items = load_judge_items(source, spec.name, spec.judge)
        else:
            items = (load_mcq if spec.task == "mcq" else load_qa)(source, spec.split)
        if spec.categories is not None:
            found = sorted({str(i.get("category")) for i in items if i.get("category") is not None})
            items = [i for i in items if i.get("category") in spec.categories]
            if not items:
                raise ConfigError(f"benchmarks.{spec.name}.categories: {spec.categories} keep no item of {source} "
                                  f"(categories there: {', '.join(found) or 'none'})")
        if spec.limit is not None:
            items = items[:spec.limit]
        out.append(Benchmark(spec, items, _items_sha256(items)))
        log.info("benchmark %s: %d %s items from %s", spec.name, len(items), spec.task, source)
    return out


# ------------------------------------------------------------------------------------------ prompts

def _is_korean(*texts: str) -> bool:
    return any(_HANGUL.search(t) for t in texts)


def _letter(i: int) -> str:
    return chr(ord("A") + i)


def mcq_prompt(item: Mapping) -> str:
    """The question, its options lettered A, B, ... and how to reply ("Answer: B" / "정답: B"), in
    Korean when the item is Korean. `tune.eval.metrics.parse_choice` reads letters, digits and option text."""
    options = "\n".join(f"{_letter(i)}. {o}" for i, o in enumerate(item["options"]))
    if _is_korean(item["question"], *item["options"]):
        return f"질문: {item['question']}\n\n{options}\n\n정답을 \"정답: B\"처럼 알파벳 하나로 답하세요."
    return f"Question: {item['question']}\n\n{options}\n\nReply with the letter of the correct option, like \"Answer: B\"."


def qa_prompt(item: Mapping) -> str:
    """The instruction, the context, then the question (last, where small models look), asking for
    a brief answer or an abstention the metric recognizes ("unanswerable" / "알 수 없음"); in Korean
    when the item is Korean."""
    if _is_korean(item["question"], item["context"]):
        return (f"아래 글을 참고하여 질문에 짧게 답하세요. 답을 알 수 없으면 \"알 수 없음\"이라고 답하세요.\n\n"
                f"{item['context']}\n\n질문: {item['question']}")
    return (f"Use the text below to answer the question briefly. If it cannot be answered, reply \"unanswerable\".\n\n"
            f"{item['context']}\n\nQuestion: {item['question']}")


def _cloze(item: Mapping, chat: bool) -> tuple[str, str]:
    """(prompt, continuation prefix) for loglikelihood scoring: the question alone, continued by an
    option's text (as the assistant's reply under a chat template; after "Answer:" raw)."""
    if chat:
        return item["question"], ""
    if _is_korean(item["question"], *item["options"]):
        return f"질문: {item['question']}\n정답:", " "
    return f"Question: {item['question']}\nAnswer:", " "


# ---------------------------------------------------------------------------------------- evaluation

class _Renderer:
    """Prompts as the model sees them: one user turn in the chat template (the registry's options
    with `spec`; the tokenizer's own, no options, without), or raw when the config says so or the
    tokenizer has no template. `add_special_tokens`: only raw prompts need BOS added."""

    def __init__(self, tokenizer, cfg: EvalConfig, spec: ModelSpec | None, model_id: str):
        self.tokenizer, self.spec, self.model_id = tokenizer, spec, model_id
        self.chat = cfg.use_chat_template and (spec is not None or bool(getattr(tokenizer, "chat_template", None)))
        if cfg.use_chat_template and not self.chat:
            log.warning("model %s: tokenizer has no chat template; evaluating on raw prompts", model_id or "?")
        self.add_special_tokens = not self.chat

    def __call__(self, prompts: list[str]) -> list[str]:
        from actors.generation import render_prompts

        if not self.chat:
            return list(prompts)
        if self.spec is not None:
            return render_prompts(self.tokenizer, prompts, self.spec, self.model_id)
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]


def _continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int,
                           add_special_tokens: bool) -> list[float]:
    """Summed log-probability of each continuation given its context (right padded, longest first)."""
    import torch

    seqs = []
    for context, continuation in pairs:
        ctx = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
        seqs.append((ctx + tokenizer(continuation, add_special_tokens=False)["input_ids"], len(ctx)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [-math.inf] * len(seqs)  # an empty continuation is never the answer
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids = torch.full((len(idx), len(seqs[idx[0]][0])), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
            mask[row, :len(seqs[i][0])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for row, i in enumerate(idx):
            tokens, n_ctx = seqs[i]
            if len(tokens) > n_ctx:  # the logits at position p predict token p + 1
                logprobs = torch.log_softmax(logits[row, n_ctx - 1:len(tokens) - 1].float(), dim=-1)
                target = torch.tensor(tokens[n_ctx:], device=logprobs.device)
                out[i] = float(logprobs.gather(1, target[:, None]).sum())
    return out


def _loglikelihood_choices(model, tokenizer, items: list[dict], batch_size: int, render: _Renderer) -> list[int]:
    """Per item, the 1-indexed option with the highest log-likelihood per character (lm-eval acc_norm)."""
    clozes = [_cloze(item, render.chat) for item in items]
    contexts = render([prompt for prompt, _ in clozes])
    pairs = [(ctx, prefix + o) for item, (_, prefix), ctx in zip(items, clozes, contexts) for o in item["options"]]
    logprobs = iter(_continuation_logprobs(model, tokenizer, pairs, batch_size, render.add_special_tokens))
    choices = []
    for item in items:
        normalized = [next(logprobs) / max(len(o), 1) for o in item["options"]]
        choices.append(normalized.index(max(normalized)) + 1)
    return choices


def _generation_config(max_new_tokens: int, batch_size: int):
    from actors.config import GenerationConfig

    # min_new_tokens 0: a model that answers in one token must not be made to say more
    return GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, batch_size=batch_size, do_sample=False)


def _prompt(bench: Benchmark) -> Callable[[Mapping], str]:
    return mcq_prompt if bench.spec.task == "mcq" else qa_prompt


def generation_prompts(benchmarks: list[Benchmark], limit: int) -> list[str]:
    """Up to `limit` unrendered prompts of the generate-mode benchmarks, round robin over them so
    each contributes: what the sweep's timing phase generates from (`tune.sweep.timing`)."""
    pools = []
    for bench in benchmarks:
        if bench.spec.mode != "generate":
            continue
        if bench.spec.task == "judge":
            pools.append([item["turns"][0] for item in bench.items])
        else:
            pools.append([_prompt(bench)(item) for item in bench.items])
    out: list[str] = []
    for i in range(max((len(p) for p in pools), default=0)):
        out += [p[i] for p in pools if i < len(p)]
    if not out:
        raise ValueError("benchmarks: no generate-mode prompt to time")
    return out[:limit]


def render_for(tokenizer, cfg: EvalConfig, spec: ModelSpec | None, model_id: str,
               prompts: list[str]) -> tuple[list[str], bool]:
    """(prompts as `evaluate` renders them for this tokenizer, add_special_tokens)."""
    render = _Renderer(tokenizer, cfg, spec, model_id)
    return render(prompts), render.add_special_tokens


def _by_category(items: list[dict], values: list[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for item, value in zip(items, values):
        if item.get("category") is not None:
            groups.setdefault(str(item["category"]), []).append(value)
    return {c: round(sum(v) / len(v), 6) for c, v in sorted(groups.items())}


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_benchmark(model, tokenizer, bench: Benchmark, cfg: EvalConfig, render: _Renderer,
                   on_progress: OnProgress | None) -> tuple[float, dict]:
    """(perf, details) of one benchmark; generate-mode details carry its tokens and seconds."""
    from actors.generation import generate_for

    spec, items = bench.spec, bench.items
    detail: dict = {"task": spec.task, "mode": spec.mode, "n": len(items)}
    if spec.task == "judge":
        gen = _generation_config(spec.max_new_tokens or cfg.max_new_tokens, cfg.batch_size)
        perf, more = run_judge_benchmark(model, tokenizer, bench, gen, spec=render.spec, model_id=render.model_id)
        return perf, {**detail, **more}
    if spec.mode == "loglikelihood":
        if getattr(model, "engine", "hf") != "hf":
            raise ValueError(f"benchmark {spec.name}: mode loglikelihood needs the transformers model (engine hf)")
        predictions = [str(c) for c in _loglikelihood_choices(model, tokenizer, items, cfg.batch_size, render)]
        if on_progress is not None:
            on_progress(spec.name, len(items), len(items))
    else:
        gen = _generation_config(spec.max_new_tokens or cfg.max_new_tokens, cfg.batch_size)
        on_batch = None if on_progress is None else (lambda done, total, _s: on_progress(spec.name, done, total))
        result = generate_for(model)(model, tokenizer, render([_prompt(bench)(i) for i in items]), gen,
                                     on_batch=on_batch, add_special_tokens=render.add_special_tokens)
        predictions = result.responses
        detail.update(generated_tokens=sum(result.new_tokens), generation_seconds=result.seconds)
    if spec.task == "mcq":
        scores = mcq_accuracy(items, predictions)
        per_item = [mcq_accuracy([i], [p])["accuracy"] for i, p in zip(items, predictions)]
        perf = scores["accuracy"]
        detail.update(metric="accuracy", parse_failure_rate=scores["parse_failure_rate"])
        gold = [str(i["solution"]) for i in items]
    else:
        scores = qa_f1(items, predictions)
        per_item = [qa_f1([i], [p])["f1"] for i, p in zip(items, predictions)]
        perf = scores["f1"]
        detail.update(metric="f1", unanswerable_n=scores["unanswerable_n"])
        gold = [i["answers"] for i in items]
    detail["by_category"] = _by_category(items, per_item)
    detail["samples"] = [{"question": _clip(i["question"], 200), "prediction": _clip(p), "gold": g}
                         for i, p, g in list(zip(items, predictions, gold))[:N_SAMPLES]]
    return perf, detail


def evaluate(model, tokenizer, benchmarks: list[Benchmark], cfg: EvalConfig, *, spec: ModelSpec | None = None,
             model_id: str = "", on_progress: OnProgress | None = None) -> EvalResult:
    """Evaluate `model` on every benchmark, greedily under torch inference mode.

    `perf[name]` is MCQ accuracy (an unparseable reply counts as wrong) or QA token F1, in [0, 1];
    `perf_mean` is their mean. `sec_per_token` = generation seconds / generated tokens (up to and
    including EOS) summed over the generate-mode benchmarks, after one short untimed warm-up.
    `details[name]` holds n, the metric, the parse-failure rate (MCQ), per-category perf and a few
    sample predictions. Prompts go through the chat template (the registry's options with `spec`;
    the tokenizer's own without) unless `cfg.use_chat_template` is False.
    `on_progress(name, done, total)` runs after each batch."""
    from actors.generation import generate_for
    from tune.eval.score import sec_per_token

    first = next((b for b in benchmarks if b.spec.mode == "generate"), None)
    warm = next((b for b in benchmarks if b.spec.mode == "generate" and b.spec.task != "judge"), None)
    if first is None:
        raise ValueError("benchmarks: need at least one in mode generate (the Score needs sec_per_token)")
    render = _Renderer(tokenizer, cfg, spec, model_id)
    hf = getattr(model, "engine", "hf") == "hf"  # a VllmModel has no train/eval modes
    was_training = model.training if hf else False
    if hf:
        model.eval()
    perf: dict[str, float] = {}
    details: dict[str, dict] = {}
    try:
        # Untimed: one-off start costs (allocator growth, kernel selection, lazy init) are not the model's speed.
        warm_prompt = _prompt(warm)(warm.items[0]) if warm else "Hello."
        generate_for(model)(model, tokenizer, render([warm_prompt]), _generation_config(2, 1),
                            add_special_tokens=render.add_special_tokens)
        for bench in benchmarks:
            started = time.perf_counter()
            perf[bench.spec.name], details[bench.spec.name] = _run_benchmark(model, tokenizer, bench, cfg, render,
                                                                            on_progress)
            log.info("%s on %s: %s %.4f over %d items in %.1f s", model_id or "model", bench.spec.name,
                     details[bench.spec.name]["metric"], perf[bench.spec.name], len(bench.items),
                     time.perf_counter() - started)
    finally:
        if hf:
            model.train(was_training)
    tokens = sum(d.get("generated_tokens", 0) for d in details.values())
    seconds = sum(d.get("generation_seconds", 0.0) for d in details.values())
    return EvalResult(perf=perf, perf_mean=sum(perf.values()) / len(perf), generated_tokens=tokens,
                      generation_seconds=round(seconds, 6), sec_per_token=sec_per_token(seconds, tokens),
                      details=details, model_id=model_id)
