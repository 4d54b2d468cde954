"""Training helpers for the toy zoo: corpus, tokenizer, tiny models and the training loops.

`cluster.models.zoo` decides *what* to build and caches it; this module knows *how*: read the bundled
Korean/English corpus, train a byte-level BPE tokenizer, construct tiny Llama / Qwen3 / EXAONE 4
models through transformers' own classes, and train them (full fine-tune or LoRA, merged).

Corpus format (`cluster/models/zoo_corpus/<topic>.txt`, UTF-8): blocks separated by blank lines. A block
whose lines start with `U: ` / `A: ` is a chat (user / assistant turns); any other block is plain
text. The file stem is the topic name that configs use to pick a corpus slice.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CORPUS_DIR = Path(__file__).parent / "zoo_corpus"

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
IM_START, END_OF_TEXT, THINK_OPEN, THINK_CLOSE = "<|im_start|>", "<|endoftext|>", "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, END_OF_TEXT, THINK_OPEN, THINK_CLOSE]

# ChatML-style turns. `enable_thinking` (default false) only adds the `<think>` opener after the
# assistant header, so a prompt rendered without it contains no think markup at all.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

ARCHITECTURES = ("llama", "qwen3", "exaone4")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Doc:
    """One corpus block: a chat (list of role/content turns) or a plain text paragraph."""

    topic: str
    chat: tuple[tuple[str, str], ...] = ()
    text: str = ""


# ---------------------------------------------------------------------------------------- corpus

def corpus_topics() -> list[str]:
    """Topic names available in the bundled corpus (file stems), sorted."""
    return sorted(p.stem for p in CORPUS_DIR.glob("*.txt"))


def corpus_digest() -> str:
    """sha256 over every corpus file's name and content: part of the zoo's cache key."""
    h = hashlib.sha256()
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _parse_block(topic: str, block: str) -> Doc:
    lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
    if lines and all(ln.startswith(("U: ", "A: ")) for ln in lines):
        turns = tuple(("user" if ln[0] == "U" else "assistant", ln[3:].strip()) for ln in lines)
        return Doc(topic, chat=turns)
    return Doc(topic, text=" ".join(lines))


def read_corpus(topics: list[str] | None = None) -> list[Doc]:
    """Documents of the given topics (all topics when None), in file order."""
    docs: list[Doc] = []
    for topic in topics or corpus_topics():
        text = (CORPUS_DIR / f"{topic}.txt").read_text(encoding="utf-8")
        docs.extend(_parse_block(topic, b) for b in text.split("\n\n") if b.strip())
    return docs


# ------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(docs: list[Doc], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on `docs`, wrapped as a `PreTrainedTokenizerFast`
    with bos/eos/pad, chat role markers, think markers and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [d.text or "\n".join(f"{role}\n{content}" for role, content in d.chat) for d in docs]
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START, END_OF_TEXT, THINK_OPEN, THINK_CLOSE],
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_docs(tokenizer, docs: list[Doc]) -> list[tuple[list[int], list[bool]]]:
    """(token ids, trained?) per document. Chats go through the chat template and only the
    assistant turns are trained (user turns are context), so a model learns to answer after the
    assistant header rather than to ask; plain text (`<s>text<|endoftext|>`) is trained throughout."""
    out = []
    for d in docs:
        if d.chat:
            messages = [{"role": r, "content": c} for r, c in d.chat]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)
            spans, pos = [], 0
            for role, content in d.chat:
                turn = f"{IM_START}{role}\n{content}{EOS}"
                start = rendered.index(turn, pos)
                pos = start + len(turn)
                if role == "assistant":  # the content and the closing <|im_end|>
                    spans.append((start + len(f"{IM_START}{role}\n"), pos))
        else:
            rendered = f"{BOS}{d.text}{END_OF_TEXT}"
            spans = [(0, len(rendered))]
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        trained = [any(lo <= a < hi for lo, hi in spans) for a, _ in enc["offset_mapping"]]
        out.append((enc["input_ids"], trained))
    return out


# ---------------------------------------------------------------------------------------- models

def build_model(arch: str, tokenizer, *, hidden_size: int, num_layers: int, num_heads: int,
                num_kv_heads: int, intermediate_size: int, sliding_window: int, seed: int):
    """A freshly initialised tiny causal LM of a real transformers architecture."""
    from transformers import (Exaone4Config, Exaone4ForCausalLM, LlamaConfig, LlamaForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, head_dim=hidden_size // num_heads))
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=hidden_size // num_heads))
    if arch == "exaone4":
        # EXAONE 4's hybrid attention: local (sliding, RoPE) layers with every third layer global
        # (full attention, no RoPE); the last layer is always global.
        layer_types = ["full_attention" if (i + 1) % 3 == 0 or i == num_layers - 1 else "sliding_attention"
                       for i in range(num_layers)]
        return Exaone4ForCausalLM(Exaone4Config(
            **common, sliding_window=sliding_window, sliding_window_pattern=3, layer_types=layer_types))
    raise ValueError(f"unknown architecture {arch!r} (allowed: {', '.join(ARCHITECTURES)})")


def count_params(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_saved_params(path: Path) -> int:
    """Parameters stored in a model dir's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def save_model(model, tokenizer, path: Path) -> None:
    """Standard HF layout: config.json, generation_config.json, model.safetensors, tokenizer files."""
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.bos_token_id = model.config.bos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


# -------------------------------------------------------------------------------------- training

class StepProgress:
    """Per-model step progress with rate and ETA: a rich bar on a TTY, else a log line every
    `log_every_s` and one at the end."""

    def __init__(self, label: str, total: int, log_every_s: float = 5.0):
        self.label, self.total, self.done = label, total, 0
        self.start = self._last_log = time.monotonic()
        self.log_every_s = log_every_s
        self._bar = None

    def __enter__(self) -> "StepProgress":
        if sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(f"training {self.label}", total=self.total, rate="")
        return self

    def advance(self, loss: float) -> None:
        self.done += 1
        self.loss = loss
        now = time.monotonic()
        rate = self.done / max(now - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{rate:.1f} steps/s loss {loss:.2f}")
        elif now - self._last_log >= self.log_every_s or self.done == self.total:
            self._last_log = now
            log.info("training %s %d/%d steps (%.1f steps/s, ETA %.0fs) loss %.3f",
                     self.label, self.done, self.total, rate, (self.total - self.done) / rate, loss)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()  # the bar is transient: leave one line behind
            seconds = time.monotonic() - self.start
            log.info("trained %s: %d steps in %.1fs (%.1f steps/s) loss %.3f", self.label, self.done, seconds,
                     self.done / max(seconds, 1e-9), getattr(self, "loss", float("nan")))


def _batches(docs: list[tuple[list[int], list[bool]]], steps: int, batch_size: int, seq_len: int, seed: int,
             pad_id: int):
    """Deterministic random windows over the documents packed into one stream (shuffled by seed):
    (input_ids, labels) with -100 where a token is context only."""
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    ids = [t for i in order for t in docs[i][0]]
    trained = [m for i in order for m in docs[i][1]]
    if len(ids) <= seq_len:
        trained += [False] * (seq_len + 1 - len(ids))
        ids += [pad_id] * (seq_len + 1 - len(ids))
    data = torch.tensor(ids, dtype=torch.long)
    labels = data.masked_fill(~torch.tensor(trained), -100)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=gen).tolist()
        yield (torch.stack([data[s:s + seq_len] for s in starts]),
               torch.stack([labels[s:s + seq_len] for s in starts]))


def train_lm(model, docs: list[tuple[list[int], list[bool]]], *, steps: int, lr: float, batch_size: int, seq_len: int,
             seed: int, label: str, warmup_steps: int = 0) -> float:
    """Next-token training (AdamW, linear warmup, cosine decay to 10%); returns the last loss."""
    torch.manual_seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_value = float("nan")
    with StepProgress(label, steps) as progress:
        for input_ids, labels in _batches(docs, steps, batch_size, seq_len, seed, model.config.pad_token_id):
            loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_value = loss.item()
            progress.advance(loss_value)
    model.eval()
    return loss_value


def lora_finetune(model, docs: list[tuple[list[int], list[bool]]], *, rank: int, **train_kwargs):
    """Train a peft LoRA adapter on all attention and MLP projections, then merge it into the
    weights (`merge_and_unload`): the result is a plain model of the parent's architecture."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    loss = train_lm(peft_model, docs, **train_kwargs)
    return peft_model.merge_and_unload(), loss


def train_zoo_model(spec, tokenizer, out: Path, *, parent_dir: Path | None, seed: int, batch_size: int,
                    seq_len: int) -> tuple[int, float]:
    """Train one zoo model into `out` and return (parameter count, final loss): a base
    (`cluster.models.zoo.BaseSpec`) from scratch when `parent_dir` is None, else a child
    (`cluster.models.zoo.ChildSpec`) from the parent saved there."""
    from transformers import AutoModelForCausalLM

    docs = encode_docs(tokenizer, read_corpus(spec.corpus))
    train_kwargs = dict(steps=spec.steps, lr=spec.lr, batch_size=batch_size, seq_len=seq_len, seed=seed,
                        label=spec.name)
    if parent_dir is None:
        model = build_model(spec.arch, tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                            num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                            intermediate_size=spec.intermediate_size, sliding_window=spec.sliding_window, seed=seed)
        loss = train_lm(model, docs, warmup_steps=min(20, spec.steps // 10), **train_kwargs)
    elif spec.derivation == "continued":
        model = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32)
        loss = train_lm(model, docs, **train_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32)
        model, loss = lora_finetune(model, docs, rank=spec.lora_rank, **train_kwargs)
    save_model(model, tokenizer, out)
    return count_params(model), loss


# ------------------------------------------------------------------------------- parallel builds

def _train_in_worker(spec, tokenizer_dir: str, out: str, parent_dir: str | None, seed: int, batch_size: int,
                     seq_len: int) -> tuple[int, float]:
    """One model in a spawned worker process, on one torch thread (the result does not depend on
    which worker, or how many, ran it)."""
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return train_zoo_model(spec, tokenizer, Path(out), parent_dir=Path(parent_dir) if parent_dir else None,
                           seed=seed, batch_size=batch_size, seq_len=seq_len)


def train_models(specs: list, *, zoo_dir: Path, tokenizer_dir: Path, workers: int, seed_of: Callable,
                 batch_size: int, seq_len: int, install: Callable[[Path, Path], None]) -> dict[str, tuple[int, float]]:
    """Train `specs` (zoo BaseSpec / ChildSpec, parents before children) into `zoo_dir/<name>`, up
    to `workers` at a time in spawned processes of one torch thread each: tiny models gain little
    from a second thread, much from a second core. A child starts once its parent is installed.
    Each model is trained in a temp dir and moved into place by `install(tmp, final)` when it is
    done. Returns {name: (parameter count, final loss)}; the first failure stops the rest and
    leaves no partial model dir behind."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    names = {s.name for s in specs}
    # no wider than the models that can train at once (those whose parent is not being trained)
    workers = min(workers, sum(getattr(s, "parent", None) not in names for s in specs))
    if workers <= 1:
        return _train_here(specs, zoo_dir, tokenizer_dir, seed_of, batch_size, seq_len, install)
    pending = list(specs)
    done: set[str] = set()
    out: dict[str, tuple[int, float]] = {}
    running: dict = {}
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            while pending or running:
                ready = [s for s in pending if getattr(s, "parent", None) not in names - done]
                for spec in ready[:max(1, workers) - len(running)]:
                    tmp = zoo_dir / f".{spec.name}.tmp-{spec.name}"
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir(parents=True)
                    parent = str(zoo_dir / spec.parent) if getattr(spec, "parent", None) else None
                    running[pool.submit(_train_in_worker, spec, str(tokenizer_dir), str(tmp), parent,
                                        seed_of(spec), batch_size, seq_len)] = (spec, tmp)
                    pending.remove(spec)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec, tmp = running.pop(future)
                    out[spec.name] = future.result()
                    install(tmp, zoo_dir / spec.name)
                    done.add(spec.name)
                    log.info("trained %s (%d/%d) in %.0fs: loss %.3f", spec.name, len(done), len(specs),
                             time.monotonic() - started, out[spec.name][1])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            for _, tmp in running.values():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _train_here(specs: list, zoo_dir: Path, tokenizer_dir: Path, seed_of: Callable, batch_size: int, seq_len: int,
                install: Callable[[Path, Path], None]) -> dict[str, tuple[int, float]]:
    """`train_models` one model after another in this process (a single model, or a chain), on
    one torch thread like the workers, so the weights are the same either way."""
    threads = torch.get_num_threads()
    out: dict[str, tuple[int, float]] = {}
    try:
        for spec in specs:
            tmp = zoo_dir / f".{spec.name}.tmp-{spec.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            parent = str(zoo_dir / spec.parent) if getattr(spec, "parent", None) else None
            try:
                out[spec.name] = _train_in_worker(spec, str(tokenizer_dir), str(tmp), parent, seed_of(spec),
                                                  batch_size, seq_len)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            install(tmp, zoo_dir / spec.name)
    finally:
        torch.set_num_threads(threads)
    return out
