"""Persona dataset prep: validate a folder of JSONL, dedupe, strip system prompts, split, measure lengths.

Every line of every `*.jsonl` directly in `data_dir` (sorted; no recursion) is either an SFT row
or a DPO row, or a bad line reported with its file:line and reason; nothing is dropped silently.

    SFT: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    DPO: {"prompt": [... ending with a user turn], "chosen": [{"role": "assistant", ...}],
          "rejected": [{"role": "assistant", ...}]}

Either may carry `"chat_template_kwargs": {...}` (kept; trl reads it per row); other keys (such as
`_cat` metadata) are left out of the prepared rows.

    result = prepare(PrepConfig(data_dir="configs/persona/seoyun"), tokenizer,
                     chat_template_kwargs={"enable_thinking": False})
    result.sft[0]["messages"], result.bad[0]      # {"file": "sft.jsonl", "line": 17, "reason": "..."}
    write_prep_report(result, out_dir)            # {"report": .../prep_report.md, "histogram": .../lengths.png}
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import Field

from cluster.config import UserError, YardModel

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
LENGTH_MULTIPLE = 64  # max_length recommendations are rounded up to this (a tensor-friendly size)
SANE_MODEL_MAX = 1_000_000  # tokenizers without a real limit report ~1e30 as model_max_length


class PrepError(UserError, ValueError):
    """A dataset that cannot be prepared (missing folder, no valid rows), phrased as one line."""


class PrepConfig(YardModel):
    """Where the persona data is and how to prepare it."""

    data_dir: str = Field(description="folder of *.jsonl files (SFT and/or DPO rows), read non-recursively")
    strip_system: bool = Field(True, description="drop system messages so the persona holds without one")
    dedupe: bool = Field(True, description="keep the first of rows whose normalized content is identical")
    held_out_fraction: float = Field(0.0, ge=0.0, le=0.5, description="share of rows held out for eval loss")
    seed: int = Field(0, description="seed of the held-out split")
    max_length: int | None = Field(None, ge=16, description="token limit to check rows against; None: recommend")


@dataclass
class PrepResult:
    """Prepared rows, what was kept out and why, and the token-length distribution."""

    sft: list[dict] = field(default_factory=list)
    dpo: list[dict] = field(default_factory=list)
    sft_held_out: list[dict] = field(default_factory=list)
    dpo_held_out: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)  # {"file", "line", "reason"}
    duplicates: int = 0
    stripped_system: int = 0  # system messages removed from valid rows (counted before dedupe)
    lengths: dict = field(default_factory=dict)  # {"sft"|"dpo": {"count", "p50", "p90", "p99", "max"}}
    length_values: dict = field(default_factory=dict)  # {"sft"|"dpo": sorted token lengths}, for the histogram
    recommended_max_length: int = LENGTH_MULTIPLE
    files: list[str] = field(default_factory=list)
    over_max_length: dict = field(default_factory=dict)  # rows longer than cfg.max_length, per kind
    max_length_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _BadRow(Exception):
    """One line's reason for being kept out."""


# ---- validation -----------------------------------------------------------------------------------

def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise _BadRow(f"{where}: not an object")
    if "role" not in m:
        raise _BadRow(f"{where}: missing role")
    if m["role"] not in ROLES:
        raise _BadRow(f"{where}: unknown role {m['role']!r} (allowed: {', '.join(ROLES)})")
    if not isinstance(m.get("content"), str):
        raise _BadRow(f"{where}: content must be a string")
    if m["role"] == "assistant" and not m["content"].strip():
        raise _BadRow(f"{where}: empty assistant turn")
    return {"role": m["role"], "content": m["content"]}


def _messages(value, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _BadRow(f"{name}: must be a non-empty list of messages")
    return [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]


def _check_turn_order(messages: list[dict], name: str, last: str) -> None:
    """After optional leading system messages, turns alternate user/assistant and end with `last`."""
    turns = [m["role"] for m in messages]
    i = 0
    while i < len(turns) and turns[i] == "system":
        i += 1
    expected = "user"
    for j, role in enumerate(turns[i:], start=i):
        if role != expected:
            raise _BadRow(f"{name}[{j}]: expected a {expected} turn, got {role} "
                          "(roles alternate user/assistant after an optional system message)")
        expected = "assistant" if role == "user" else "user"
    if i == len(turns):
        raise _BadRow(f"{name}: no user turn")
    if turns[-1] != last:
        raise _BadRow(f"{name}: last turn must be {last}, got {turns[-1]}")


def _template_kwargs(row: dict) -> dict | None:
    kwargs = row.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _BadRow("chat_template_kwargs: must be an object")
    return kwargs


def _assistant_only(value, name: str) -> list[dict]:
    msgs = _messages(value, name)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise _BadRow(f"{name}: must be exactly one assistant message")
    return msgs


def validate_row(row) -> tuple[str, dict]:
    """("sft" | "dpo", the row with only known keys); raises _BadRow with the reason."""
    if not isinstance(row, dict):
        raise _BadRow("not a JSON object")
    kwargs = _template_kwargs(row)
    if "messages" in row:
        msgs = _messages(row["messages"], "messages")
        _check_turn_order(msgs, "messages", last="assistant")
        kind, out = "sft", {"messages": msgs}
    elif {"prompt", "chosen", "rejected"} <= row.keys():
        prompt = _messages(row["prompt"], "prompt")
        _check_turn_order(prompt, "prompt", last="user")
        chosen = _assistant_only(row["chosen"], "chosen")
        rejected = _assistant_only(row["rejected"], "rejected")
        if chosen[0]["content"].strip() == rejected[0]["content"].strip():
            raise _BadRow("chosen equals rejected")
        kind, out = "dpo", {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    else:
        raise _BadRow("unknown schema (expected 'messages', or 'prompt' + 'chosen' + 'rejected'); "
                      f"keys: {', '.join(sorted(map(str, row))) or 'none'}")
    if kwargs is not None:
        out["chat_template_kwargs"] = kwargs
    return kind, out


def _strip_system(row: dict) -> int:
    """Remove system messages in place; returns how many."""
    key = "messages" if "messages" in row else "prompt"
    kept = [m for m in row[key] if m["role"] != "system"]
    removed = len(row[key]) - len(kept)
    row[key] = kept
    return removed


def _content_hash(row: dict) -> str:
    """Hash of the row with message text whitespace-trimmed, so re-serialized copies still match."""
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v.strip() if isinstance(v, str) else v
    return hashlib.sha256(json.dumps(norm(row), ensure_ascii=False, sort_keys=True).encode()).hexdigest()


# ---- lengths --------------------------------------------------------------------------------------

def render_conversation(messages: list[dict], tokenizer, chat_template_kwargs: dict | None = None) -> str:
    """The text the model trains on for `messages`, through the tokenizer's chat template
    (`chat_template_kwargs` such as enable_thinking=False passed to the template)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, **(chat_template_kwargs or {}))


def _conversation(row: dict) -> list[dict]:
    return row["messages"] if "messages" in row else row["prompt"] + row["chosen"]


def token_length(row: dict, tokenizer, chat_template_kwargs: dict | None = None) -> int:
    """Tokens of an SFT row, or of a DPO row's prompt + chosen, as rendered by the chat template;
    the row's own chat_template_kwargs override the job-wide ones."""
    kwargs = {**(chat_template_kwargs or {}), **row.get("chat_template_kwargs", {})}
    text = render_conversation(_conversation(row), tokenizer, kwargs)
    # the template already wrote any BOS/special tokens into the text
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (a value that occurs in the data) of an ascending list."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def _summary(values: list[int]) -> dict:
    s = sorted(values)
    return {"count": len(s), "p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99),
            "max": s[-1] if s else 0}


def recommend_max_length(p99: int, model_max: int | None = None) -> tuple[int, str]:
    """p99 rounded up to a multiple of 64, capped by the model's limit: (length, why)."""
    rounded = max(LENGTH_MULTIPLE, math.ceil(p99 / LENGTH_MULTIPLE) * LENGTH_MULTIPLE)
    why = (f"p99 = {p99} tokens rounded up to a multiple of {LENGTH_MULTIPLE} = {rounded}: about 1 row in 100 "
           "is truncated, padding per batch stays small")
    if model_max and model_max < rounded:
        return model_max, why + f"; capped at the tokenizer's model_max_length {model_max}"
    return rounded, why


# ---- prepare --------------------------------------------------------------------------------------

def _read_rows(files: list[Path], result: PrepResult) -> tuple[list[dict], list[dict]]:
    sft, dpo = [], []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # a blank line holds no row
                try:
                    try:
                        raw = json.loads(line.rstrip("\r\n"))
                    except json.JSONDecodeError as e:
                        raise _BadRow(f"malformed JSON: {e.msg} (column {e.colno})") from None
                    kind, row = validate_row(raw)
                except _BadRow as e:
                    result.bad.append({"file": path.name, "line": lineno, "reason": str(e)})
                    continue
                (sft if kind == "sft" else dpo).append(row)
    return sft, dpo


def _dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    seen, kept = set(), []
    for row in rows:
        h = _content_hash(row)
        if h not in seen:
            seen.add(h)
            kept.append(row)
    return kept, len(rows) - len(kept)


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): a seeded sample of round(fraction * n) rows held out (at least 1 when
    fraction > 0 and there are 2+ rows), both in file order."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    n_held = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(random.Random(seed).sample(range(len(rows)), n_held))
    return ([r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held])


def prepare(cfg: PrepConfig, tokenizer, *, chat_template_kwargs: dict | None = None) -> PrepResult:
    """Validate, strip system prompts, dedupe, split and measure the rows of `cfg.data_dir`.

    Raises PrepError when the folder is missing, holds no *.jsonl, or yields zero valid SFT rows."""
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_dir():
        raise PrepError(f"prep.data_dir: {cfg.data_dir} is not a directory")
    files = sorted(p for p in data_dir.glob("*.jsonl") if p.is_file())
    if not files:
        raise PrepError(f"prep.data_dir: no *.jsonl files in {cfg.data_dir}")
    result = PrepResult(files=[p.name for p in files])
    sft, dpo = _read_rows(files, result)
    if cfg.strip_system:
        result.stripped_system = sum(_strip_system(r) for r in sft + dpo)
    if cfg.dedupe:
        # after stripping: rows that differ only in their system prompt train the same thing
        sft, dup_sft = _dedupe(sft)
        dpo, dup_dpo = _dedupe(dpo)
        result.duplicates = dup_sft + dup_dpo
    if result.bad:
        first = result.bad[0]
        log.warning("%d bad lines kept out of %s (first: %s:%d %s); the prep report lists them all",
                    len(result.bad), data_dir, first["file"], first["line"], first["reason"])
    if not sft:
        raise PrepError(f"no valid rows: 0 SFT rows in {cfg.data_dir} "
                        f"({len(result.bad)} bad lines, {len(dpo)} DPO rows); nothing to train on")
    result.sft, result.sft_held_out = _split(sft, cfg.held_out_fraction, cfg.seed)
    result.dpo, result.dpo_held_out = _split(dpo, cfg.held_out_fraction, cfg.seed)

    for kind, rows in (("sft", sft), ("dpo", dpo)):
        values = sorted(token_length(r, tokenizer, chat_template_kwargs) for r in rows)
        result.length_values[kind], result.lengths[kind] = values, _summary(values)
    p99 = max(result.lengths["sft"]["p99"], result.lengths["dpo"]["p99"])
    model_max = getattr(tokenizer, "model_max_length", None)
    model_max = model_max if isinstance(model_max, int) and 0 < model_max < SANE_MODEL_MAX else None
    result.recommended_max_length, result.max_length_note = recommend_max_length(p99, model_max)
    limit = cfg.max_length or result.recommended_max_length
    result.over_max_length = {k: sum(v > limit for v in vs) for k, vs in result.length_values.items()}
    log.info("prepared %d SFT (+%d held out) and %d DPO (+%d held out) rows from %d files: %d bad, "
             "%d duplicates, %d system messages stripped; recommended max_length %d",
             len(result.sft), len(result.sft_held_out), len(result.dpo), len(result.dpo_held_out),
             len(files), len(result.bad), result.duplicates, result.stripped_system,
             result.recommended_max_length)
    return result


# ---- report ---------------------------------------------------------------------------------------

def write_prep_report(result: PrepResult, out_dir) -> dict[str, Path]:
    """Write prep_report.md (counts, every bad line, lengths, the max_length advice) and
    lengths.png (token-length histograms) into `out_dir`; returns {"report": path, "histogram": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _plot_lengths(result, out / "lengths.png")
    lines = [
        "# Persona dataset prep", "",
        f"Files: {', '.join(result.files)}", "",
        "| | rows | held out |", "|---|---|---|",
        f"| SFT | {len(result.sft)} | {len(result.sft_held_out)} |",
        f"| DPO | {len(result.dpo)} | {len(result.dpo_held_out)} |", "",
        f"- bad lines kept out: {len(result.bad)}",
        f"- duplicates removed (content hash): {result.duplicates}",
        f"- system messages stripped: {result.stripped_system}", "",
        "## Token lengths (chat template applied)", "",
        "| kind | rows | p50 | p90 | p99 | max | over max_length |", "|---|---|---|---|---|---|---|",
    ]
    for kind, d in result.lengths.items():
        lines.append(f"| {kind.upper()} | {d['count']} | {d['p50']} | {d['p90']} | {d['p99']} | {d['max']} | "
                     f"{result.over_max_length.get(kind, 0)} |")
    lines += ["", "DPO lengths are prompt + chosen.", "",
              f"Recommended max_length: **{result.recommended_max_length}** ({result.max_length_note}).", "",
              f"![token lengths]({png.name})", ""]
    if result.bad:
        lines += ["## Bad lines", "", "| file:line | reason |", "|---|---|"]
        lines += [f"| {b['file']}:{b['line']} | {b['reason'].replace('|', '/')} |" for b in result.bad]
        lines.append("")
    report = out / "prep_report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return {"report": report, "histogram": png}


def _plot_lengths(result: PrepResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, values in result.length_values.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{kind.upper()} ({len(values)} rows)")
    ax.axvline(result.recommended_max_length, color="k", linestyle="--",
               label=f"recommended max_length {result.recommended_max_length}")
    ax.set_xlabel("tokens per row (chat template applied)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
