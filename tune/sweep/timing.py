"""The Score's speed half, measured fairly: baseline and candidates timed alone, interleaved, repeated.

Timing inside a trial measures contention, not the model: trials run side by side (2 or 4 to a
node) while the baseline was timed alone in the prepare step, so a plain copy of the base scored
0.403 instead of 0.5. After the trials, `time_models` runs as one task with nothing else of the
sweep beside it (tune/sweep/timing_phase.py). Round after round it visits every candidate in turn (the
order rotates each round); a visit times the baseline and the candidate alternately, at least
`repeats` pairs and `min_visit_s` seconds, each generating the same prompts for exactly
`new_tokens` tokens per row, EOS ignored, and keeps each one's fastest run. Every model thus
produces the same token count over the same batch shapes, and rows that finish early cannot make a
model look faster or slower. Every model's weights are first copied into fresh memory of their own:
loaded from safetensors, they are pages of a mapped file, a different file per model
(`_own_memory`).

Per model: sec_per_token per visit and its median. Per candidate: speed_norm in each round against
the baseline timed in the same visit (paired seconds apart, B C then C B, so a drift in the
machine's speed cancels), its median, and the spread, half the range over rounds. The Score's
spread is half the speed_norm spread (Score = 0.5 PerfNorm + 0.5 SpeedNorm). Garbage collection
is off while a run is timed, as in `timeit`.

On this project's 2-core VMs the machine's own speed moves (the same model's runs went from 150
to 290 ms within a minute, nothing else running): a plain copy timed against the base by this
phase (5 rounds, 1 s visits) had speed_norm within about ±0.05; the fastest run of all (not
per visit) moved twice as much, so the per-visit median stays. Beside another busy process the
copy's Score moved to 0.47-0.55: timing needs a quiet node, and the test suite gives its timing
test one (`quiet` marker, tests/conftest.py).

    timing = time_models({"base": load_base, "t1": load_t1}, texts_for, TimingConfig(rounds=5))
    timing["models"]["t1"]["speed_norm"], timing["models"]["t1"]["speed_norm_spread"]
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from pydantic import Field

from cluster.config import YardModel
from cluster.engines.engine import gc_paused

BASELINE = "__baseline__"
# Models kept loaded between rounds while their weights add up to less than this (else reloaded
# at every visit; a load is never timed).
KEEP_LOADED_MB = 4096.0


class TimingConfig(YardModel):
    """The sweep's timing phase (the Score's speed half)."""

    enabled: bool = Field(True, description="false: keep each trial's own (contended) sec_per_token")
    rounds: int = Field(5, ge=1, le=50, description="visits per model, interleaved with the others")
    prompts: int = Field(16, ge=1, description="the first N generate-mode benchmark prompts")
    new_tokens: int = Field(32, ge=1, le=4096, description="tokens every row generates (EOS ignored)")
    batch_size: int | None = Field(None, ge=1, description="default: eval.batch_size (HF; vLLM takes every prompt "
                                   "at once, up to eval.engine.vllm.max_num_seqs)")
    repeats: int = Field(3, ge=1, le=100, description="timed generations per visit at least; the fastest counts")
    min_visit_s: float = Field(1.0, ge=0, le=600, description="repeat within a visit until this much was timed")


def generate_fixed(model, tokenizer, texts: list[str], new_tokens: int, batch_size: int,
                   add_special_tokens: bool = False) -> tuple[float, int]:
    """(seconds, tokens): greedy generation of exactly `new_tokens` per text (EOS suppressed by
    min_new_tokens), `batch_size` texts at a time, left padded. tokens = len(texts) * new_tokens.
    Wall time, the GPU synchronised before the clock stops."""
    import torch

    from actors.generation import _prepare

    _prepare(tokenizer)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    batches = [tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                         add_special_tokens=add_special_tokens).to(model.device)
               for i in range(0, len(texts), batch_size)]
    tokens = 0
    with gc_paused():
        cuda = next(model.parameters()).device.type == "cuda"
        started = time.perf_counter()
        for inputs in batches:
            with torch.inference_mode():
                out = model.generate(**inputs, **kwargs)
            tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    check_tokens("timing", tokens, len(texts) * new_tokens)
    return seconds, tokens


def check_tokens(what: str, tokens: int, expected: int) -> None:
    """A generation that stopped early would skew the ratio: RuntimeError."""
    if tokens != expected:
        raise RuntimeError(f"{what}: expected {expected} tokens, generated {tokens}")


def _own_memory(model) -> None:
    """Copy a CPU model's weights and buffers into fresh memory of their own. safetensors loads map
    the file: each model's weights are pages of a different file (the zoo's, a trial's output),
    and the CI machine timed a plain copy of the base 9% faster than the base itself, 5 rounds
    alike. Copied, every model reads its weights from the same kind of memory. Tied weights stay
    tied (one Parameter object, copied once)."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def _half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2 if values else 0.0


Loader = Callable[[], tuple]  # () -> (model, tokenizer)


def time_models(loaders: dict[str, Loader], texts_for: Callable[[object], tuple[list[str], bool]],
                cfg: TimingConfig, batch_size: int, *, baseline: str = BASELINE,
                on_visit: Callable[[int, int, str], None] | None = None) -> dict:
    """Time every candidate of `loaders` against the baseline, `cfg.rounds` rounds, interleaved.

    A visit times baseline and candidate alternately (B C, C B, B C ...), at least `cfg.repeats`
    pairs and `cfg.min_visit_s` seconds, and keeps each one's fastest run: the pair is measured
    seconds apart, so a machine whose speed drifts (a VM's neighbours, a daemon) slows both alike,
    and a run can only be slowed by such noise, never sped up. `texts_for(tokenizer)` gives
    (rendered prompts, add_special_tokens). Returns {"rounds", "new_tokens", "prompts", "models":
    {name: {"sec_per_token" (median over visits), "sec_per_token_runs" (fastest per visit),
    "generated_tokens" (per run), and for candidates "speed_norm" (median over visits),
    "speed_norm_runs" (per visit, against the baseline in the same visit), "speed_norm_spread"}}}. `on_visit(done, total, name)` runs after each visit."""
    from cluster.models.loading import release_memory

    if baseline not in loaders:
        raise ValueError(f"timing: the baseline {baseline!r} is not among the models to time")
    names = [n for n in loaders if n != baseline]
    kept: dict[str, tuple] = {}
    kept_mb = [0.0]
    warmed: set[str] = set()
    tokens: dict[str, int] = {}
    texts_count = [0]

    def load(name: str) -> tuple:
        if name in kept:
            return kept[name]
        model, tokenizer = loaders[name]()
        _own_memory(model)
        mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        # the baseline is always kept: every visit times it
        if name == baseline or kept_mb[0] + mb <= KEEP_LOADED_MB:
            kept[name], kept_mb[0] = (model, tokenizer), kept_mb[0] + mb
        return model, tokenizer

    def timed(name: str, model, tokenizer) -> float:
        texts, special = texts_for(tokenizer)
        texts = texts[:cfg.prompts]
        texts_count[0] = len(texts)
        if name not in warmed:  # untimed: allocator growth and kernel choice are not the model's speed
            generate_fixed(model, tokenizer, texts[:1], 2, 1, special)
            warmed.add(name)
        seconds, tokens[name] = generate_fixed(model, tokenizer, texts, cfg.new_tokens, batch_size, special)
        return seconds

    base = load(baseline)
    runs: dict[str, list[float]] = {n: [] for n in loaders}
    norms: dict[str, list[float]] = {n: [] for n in names}
    total, done = len(names) * cfg.rounds, 0
    for r in range(cfg.rounds):
        shift = r % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            model, tokenizer = load(name)
            b: list[float] = []
            c: list[float] = []
            while len(c) < cfg.repeats or (sum(b) + sum(c) < cfg.min_visit_s and len(c) < 100):
                # B C, then C B: whichever runs second in a pair (warm caches, a neighbour's burst)
                # is second equally often
                if len(c) % 2 == 0:
                    b.append(timed(baseline, *base))
                    c.append(timed(name, model, tokenizer))
                else:
                    c.append(timed(name, model, tokenizer))
                    b.append(timed(baseline, *base))
            runs[baseline].append(min(b) / tokens[baseline])
            runs[name].append(min(c) / tokens[name])
            norms[name].append(1.0 - min(c) / min(b))
            if name not in kept:
                del model
                release_memory()
            done += 1
            if on_visit is not None:
                on_visit(done, total, name)
    out = {"rounds": cfg.rounds, "new_tokens": cfg.new_tokens, "prompts": texts_count[0],
           "batch_size": batch_size, "models": _per_model(runs, norms, tokens)}
    kept.clear()
    release_memory()
    return out


Measure = Callable[[str], tuple[float, int]]  # name -> (fastest seconds, tokens), in a process of its own


def time_in_fresh_processes(measure: Measure, names: list[str], cfg: TimingConfig, batch_size: int, *,
                            baseline: str = BASELINE,
                            on_visit: Callable[[int, int, str], None] | None = None) -> dict:
    """Time the baseline and each candidate (`names`), each visit a process of its own: how a
    vLLM sweep is timed (tune/sweep/timing_phase.py). `measure(name)` starts the model in a fresh
    process, generates `cfg.repeats` times and returns the fastest (seconds, tokens).

    A vLLM engine cannot be kept beside another on one GPU, and the trials' own figures depended on
    where they were taken: on an H100, three identical copies of the base, each timed in its trial's
    process, came out 22%, 34% and 42% slower than the base timed in the prepare step (issue 26),
    slower with each trial the process had served. Here every model is timed in the same
    conditions: a new process, its first engine. Round r times the baseline first (last on odd
    rounds) and the candidates in an order rotated by r; a candidate's speed_norm in round r is
    against the baseline of round r. Returns the dict `time_models` returns, with "fresh_process"."""
    if baseline in names:
        raise ValueError(f"timing: the baseline {baseline!r} is timed in every round; do not list it")
    runs: dict[str, list[float]] = {n: [] for n in [baseline, *names]}
    norms: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = {}
    total, done = len(names) * cfg.rounds, 0
    for r in range(cfg.rounds):
        shift = r % max(1, len(names))
        order = names[shift:] + names[:shift]
        order = [baseline, *order] if r % 2 == 0 else [*order, baseline]
        for name in order:
            seconds, tokens[name] = measure(name)
            runs[name].append(seconds / tokens[name])
            if name != baseline:
                done += 1
                if on_visit is not None:
                    on_visit(done, total, name)
        for name in names:
            norms[name].append(1.0 - runs[name][-1] / runs[baseline][-1])
    return {"rounds": cfg.rounds, "new_tokens": cfg.new_tokens, "prompts": tokens.get(baseline, 0) // cfg.new_tokens,
            "batch_size": batch_size, "fresh_process": True, "models": _per_model(runs, norms, tokens)}


def _per_model(runs: dict[str, list[float]], norms: dict[str, list[float]], tokens: dict[str, int]) -> dict:
    """The "models" entry of a timing result: every model's seconds per token (median over visits),
    and each candidate's (those in `norms`) speed_norm, per visit, median and spread."""
    out = {}
    for name in runs:
        entry = {"sec_per_token": statistics.median(runs[name]) if runs[name] else None,
                 "sec_per_token_runs": runs[name], "generated_tokens": tokens.get(name)}
        if name in norms:
            entry.update(speed_norm=statistics.median(norms[name]), speed_norm_runs=norms[name],
                         speed_norm_spread=_half_range(norms[name]))
        out[name] = entry
    return out


def timing_summary(timing: dict | None) -> dict | None:
    if timing is None:
        return None
    return {k: timing.get(k) for k in ("rounds", "new_tokens", "prompts", "batch_size", "device", "torch_threads",
                                       "fresh_process")}


def apply_timing(rows: list[dict], baseline_row: dict, timing: dict) -> list[dict]:
    """Rows with the timing phase's speed: sec_per_token, speed_norm, score and score_spread from
    `timing`; the trial's own figures kept as `sec_per_token_in_trial` / `score_in_trial`. Rows the
    timing phase did not measure are returned unchanged; `baseline_row` gets the base's time."""
    models = timing["models"]
    baseline_row["sec_per_token"] = models[BASELINE]["sec_per_token"]
    out = []
    for row in rows:
        t = models.get(row["trial_id"])
        if row.get("status") != "ok" or t is None:
            out.append(row)
            continue
        speed = t["speed_norm"]
        # a base whose perf is 0 (random weights) leaves no PerfNorm and no Score: the speed still counts
        perf_norm = row.get("perf_norm")
        score = None if perf_norm is None else round(max(0.5 * perf_norm + 0.5 * speed, 0.0), 6)
        out.append({**row, "sec_per_token_in_trial": row.get("sec_per_token"), "score_in_trial": row.get("score"),
                    "speed_norm_in_trial": row.get("speed_norm"),
                    "sec_per_token": round(t["sec_per_token"], 9), "speed_norm": round(speed, 6),
                    "score": score, "score_spread": round(0.5 * t["speed_norm_spread"], 6)})
    return out
