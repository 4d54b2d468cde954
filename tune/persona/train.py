"""Persona training stages: an SFT LoRA adapter, then DPO from it, with trl; merge; loss plot.

The settings default to the seed recipe (r 64, alpha 128, SFT lr 1e-4 cosine x 3 epochs, batch
16 x 2; DPO lr 5e-6, beta 0.1, batch 4 x 2). The same settings run on every backend:

- CUDA with unsloth importable: `FastLanguageModel`, 4-bit, `use_gradient_checkpointing="unsloth"`;
- CUDA without it: transformers + peft, bitsandbytes 4-bit and adamw_8bit when bitsandbytes imports;
- CPU: transformers + peft in fp32 with adamw_torch.

    sft = train_sft(base, prep.sft, prep.sft_held_out, LoraSettings(), SftSettings(), out / "sft",
                    chat_template_kwargs={"enable_thinking": False})
    dpo = train_dpo(base, sft.adapter_dir, prep.dpo, prep.dpo_held_out, LoraSettings(), DpoSettings(),
                    out / "dpo", chat_template_kwargs={"enable_thinking": False})
    merged = merge_adapter(base, dpo.adapter_dir, out / "merged")      # plain HF dir, bf16

SFT trains on the final assistant turn of each conversation (trl's prompt-completion form): the
prompt is rendered with the generation prompt exactly as at inference, so whatever the template
puts there (Qwen3's empty think block with enable_thinking off) is context, never a target.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from cluster.config import UserError, YardModel
from tune.persona.gguf import export_gguf  # noqa: F401  (part of this module's public surface)

log = logging.getLogger(__name__)

# unsloth wants explicit names; "all-linear" means these on Llama/Qwen/EXAONE-style blocks
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainError(UserError, ValueError):
    """A training input problem, phrased as one line naming the field."""


class LoraSettings(YardModel):
    """The LoRA adapter trained in both stages."""

    r: int = Field(64, ge=1)
    alpha: int = Field(128, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # "all-linear": every nn.Linear except the output head (q/k/v/o + gate/up/down)
    target_modules: str | list[str] = "all-linear"
    # Trained in full beside the adapter and saved with it, e.g. ["embed_tokens"]: a tied output
    # head stays tied to it. LoRA never reaches a tied head, so a base that never learned to say the
    # persona's tokens cannot be taught them without this (the toy zoo's bases; see the demo config).
    modules_to_save: list[str] = Field(default_factory=list)


class SftSettings(YardModel):
    """Stage 1, supervised fine-tuning on the persona conversations."""

    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0)
    scheduler: str = "cosine"
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(2, ge=1)
    max_length: int = Field(1024, ge=8)
    packing: bool = False
    # "auto": adamw_8bit on CUDA when bitsandbytes imports, adamw_torch otherwise
    optim: str = "auto"
    # "auto": bf16 on a CUDA GPU that supports it, fp32 otherwise
    bf16: bool | Literal["auto"] = "auto"
    # caps the run (demo / tests); None trains the full epochs
    max_steps: int | None = Field(None, ge=1)
    logging_steps: int = Field(1, ge=1)


class DpoSettings(YardModel):
    """Stage 2, preference optimisation starting from the SFT adapter."""

    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(2, ge=1)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_length: int = Field(1024, ge=8)
    max_steps: int | None = Field(None, ge=1)


@dataclass
class StageResult:
    """What one training stage produced and measured."""

    stage: str                      # "sft" | "dpo"
    adapter_dir: str
    log: list[dict] = field(default_factory=list)   # {step, loss?, eval_loss?, lr?, rewards/...?} per log
    train_loss: float = float("nan")
    eval_loss: float | None = None
    seconds: float = 0.0            # trainer.train() wall time, loading excluded
    tokens: int = 0                 # non-padding tokens the trainer consumed
    tokens_per_s: float = 0.0
    backend: str = "peft"           # "unsloth" | "peft"
    steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- backend and precision ----------------------------------------------------------------------

def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pick_device(device: str) -> str:
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise TrainError(f"device: {device!r} is not a device (allowed: auto, cpu, cuda)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device: 'cuda' requested but no CUDA GPU is visible")
    return device


def _backend(device: str, wanted: str = "auto") -> str:
    if wanted not in ("auto", "peft", "unsloth"):
        raise TrainError(f"backend: {wanted!r} is not a backend (allowed: auto, peft, unsloth)")
    # unsloth is CUDA-only and lives in the gpu-train extra; find_spec avoids importing it on CPU
    available = device == "cuda" and _has("unsloth")
    if wanted == "unsloth" and not available:
        raise TrainError("backend: 'unsloth' needs a CUDA GPU and the gpu-train extra")
    return "unsloth" if wanted == "unsloth" or (wanted == "auto" and available) else "peft"


def _use_bf16(setting, device: str) -> bool:
    import torch

    if setting == "auto":
        return device == "cuda" and torch.cuda.is_bf16_supported()
    if setting and device != "cuda":
        raise TrainError(f"bf16: True needs a CUDA GPU (device is {device})")
    return bool(setting)


def _optim(setting: str, device: str) -> str:
    if setting == "auto":
        return "adamw_8bit" if device == "cuda" and _has("bitsandbytes") else "adamw_torch"
    if "8bit" in setting and not (device == "cuda" and _has("bitsandbytes")):
        raise TrainError(f"optim: {setting!r} needs CUDA and bitsandbytes (the gpu-train extra)")
    return setting


def _target_modules(lora: LoraSettings, backend: str):
    if backend == "unsloth" and lora.target_modules == "all-linear":
        return ALL_LINEAR
    return lora.target_modules


def _trl(backend: str):
    """The trl module, with a torch log-prob kernel where Triton is missing (CPU; see trl_cpu)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (it patches transformers and trl, so it goes first)
    import trl

    from tune.persona.trl_cpu import ensure_logprob_kernel

    ensure_logprob_kernel()
    return trl


def _load(base_path: str, device: str, backend: str, max_length: int, bf16: bool, adapter_dir: str | None = None):
    """(model, tokenizer) for training: the base, or base + `adapter_dir` made trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(base_path).is_dir():
        raise TrainError(f"base_path: {base_path} is not a model directory")
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # noqa: PLC0415 (CUDA only)

        # an adapter dir loads base + adapter (unsloth reads base_model_name_or_path from it)
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=adapter_dir or base_path,
                                                             max_seq_length=max_length, load_in_4bit=True, dtype=None)
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    kwargs: dict = {"dtype": torch.float32}
    quantized = False
    if device == "cuda":
        kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float16, "device_map": {"": 0}}
        if _has("bitsandbytes"):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"])
            quantized = True
    model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return model, tokenizer


# --- data ---------------------------------------------------------------------------------------

def _sft_rows(rows, name: str, chat_template_kwargs: dict | None) -> list[dict]:
    """{"messages"} conversations as trl prompt-completion rows ending on the last assistant turn."""
    out = []
    for i, row in enumerate(rows or []):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list):
            raise TrainError(f"{name}[{i}]: expected a {{'messages': [...]}} row")
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or not str(messages[last].get("content", "")).strip():
            raise TrainError(f"{name}[{i}]: no non-empty assistant turn to train on")
        clean = [{"role": m["role"], "content": m["content"]} for m in messages[:last + 1]]
        out.append({"prompt": clean[:-1], "completion": clean[-1:],
                    **({"chat_template_kwargs": dict(chat_template_kwargs)} if chat_template_kwargs else {})})
    return out


def _dpo_rows(rows, name: str, chat_template_kwargs: dict | None) -> list[dict]:
    out = []
    for i, row in enumerate(rows or []):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), list) for k in ("prompt", "chosen", "rejected")):
            raise TrainError(f"{name}[{i}]: expected conversational prompt / chosen / rejected lists")
        clean = {k: [{"role": m["role"], "content": m["content"]} for m in row[k]]
                 for k in ("prompt", "chosen", "rejected")}
        if chat_template_kwargs:
            clean["chat_template_kwargs"] = dict(chat_template_kwargs)
        out.append(clean)
    return out


def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


# --- the two stages -----------------------------------------------------------------------------

def _common_args(out_dir: Path, device: str, bf16: bool, held_out: bool, max_steps: int | None) -> dict:
    # transformers 5 takes the warmup ratio as a float warmup_steps in [0, 1) (warmup_ratio is gone)
    return dict(output_dir=str(out_dir / "_trainer"), report_to="none", save_strategy="no", use_cpu=device == "cpu",
                bf16=bf16, fp16=False, max_steps=max_steps or -1, seed=0,
                # checkpointing pays on a GPU's memory; on CPU it only costs time
                gradient_checkpointing=device == "cuda",
                eval_strategy="steps" if held_out else "no", eval_steps=0.1 if held_out else None)


def _step_callback(on_step):
    """A transformers TrainerCallback calling `on_step(global_step)` after every optimizer step."""
    from transformers import TrainerCallback

    class _OnStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step(state.global_step)

    return _OnStep()


def _run(trainer, stage: str, out_dir: Path, backend: str, held_out: bool, adapters: list[str] | None,
         on_step=None) -> StageResult:
    """Train, save the adapter (`adapters`: which of the model's adapters), and measure.
    `on_step(step)` runs after every optimizer step (the stage's heartbeat)."""
    if on_step is not None:
        trainer.add_callback(_step_callback(on_step))
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    eval_loss = trainer.evaluate()["eval_loss"] if held_out else None
    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir), selected_adapters=adapters)
    trainer.processing_class.save_pretrained(str(adapter_dir))
    scratch = Path(trainer.args.output_dir)  # save_strategy "no" leaves it empty; don't ship an empty dir
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
    history = trainer.state.log_history
    log_rows = []
    for entry in history:
        row = {"step": entry.get("step")}
        if "loss" in entry:
            row["loss"] = entry["loss"]
        if "eval_loss" in entry:
            row["eval_loss"] = entry["eval_loss"]
        if "learning_rate" in entry:
            row["lr"] = entry["learning_rate"]
        row.update({k: v for k, v in entry.items() if k.startswith("rewards/")})
        # the final evaluate() repeats the last periodic eval at the same step
        if len(row) > 1 and "train_runtime" not in entry and (not log_rows or row != log_rows[-1]):
            log_rows.append(row)
    # trl counts the attention-mask tokens of every training batch; num_tokens is its running total
    tokens = int(max((e.get("num_tokens", 0) for e in history), default=0)
                 or getattr(trainer, "_total_train_tokens", 0))
    result = StageResult(stage=stage, adapter_dir=str(adapter_dir), log=log_rows,
                         train_loss=float(output.training_loss), eval_loss=eval_loss, seconds=seconds, tokens=tokens,
                         tokens_per_s=tokens / seconds if seconds > 0 else 0.0, backend=backend,
                         steps=int(trainer.state.global_step))
    log.info("%s: %d steps, loss %.4f, %d tokens in %.1f s (%.0f tok/s, %s)", stage, result.steps,
             result.train_loss, tokens, seconds, result.tokens_per_s, backend)
    return result


def build_sft_trainer(base_path: str, rows, held_out, lora: LoraSettings, cfg: SftSettings, out_dir, *,
                      chat_template_kwargs: dict | None = None, device: str = "auto", backend: str = "auto"):
    """(SFTTrainer, backend, has_held_out) as `train_sft` runs it, the dataset already tokenized.
    `backend` "auto" takes unsloth where it can run; "peft" forces the plain path (benchmarks)."""
    train = _sft_rows(rows, "rows", chat_template_kwargs)
    if not train:
        raise TrainError("rows: no SFT rows to train on")
    evals = _sft_rows(held_out, "held_out", chat_template_kwargs)
    device = _pick_device(device)
    backend, bf16, optim = _backend(device, backend), _use_bf16(cfg.bf16, device), _optim(cfg.optim, device)
    trl = _trl(backend)
    model, tokenizer = _load(base_path, device, backend, cfg.max_length, bf16)
    peft_config = None
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # noqa: PLC0415

        model = FastLanguageModel.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
            target_modules=_target_modules(lora, backend), modules_to_save=lora.modules_to_save or None,
            use_gradient_checkpointing="unsloth", random_state=0)
    else:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                                 target_modules=lora.target_modules, task_type="CAUSAL_LM",
                                 modules_to_save=lora.modules_to_save or None,
                                 ensure_weight_tying=bool(lora.modules_to_save))
    args = trl.SFTConfig(num_train_epochs=cfg.epochs, learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler,
                         warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                         per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
                         gradient_accumulation_steps=cfg.grad_accum, max_length=cfg.max_length, packing=cfg.packing,
                         optim=optim, logging_steps=cfg.logging_steps, completion_only_loss=True,
                         **_common_args(Path(out_dir), device, bf16, bool(evals), cfg.max_steps))
    if backend == "unsloth":
        args.gradient_checkpointing = False  # unsloth's own checkpointing is already in the model
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=_dataset(train), eval_dataset=_dataset(evals),
                             processing_class=tokenizer, peft_config=peft_config)
    return trainer, backend, bool(evals)


def train_sft(base_path: str, rows, held_out, lora: LoraSettings, cfg: SftSettings, out_dir, *,
              chat_template_kwargs: dict | None = None, device: str = "auto", backend: str = "auto",
              on_step=None) -> StageResult:
    """Train a LoRA adapter on `rows` ({"messages": [...]}, system turns already stripped) and save it
    with the tokenizer in `out_dir/adapter`. The loss covers each conversation's final assistant
    turn; `held_out` rows give eval_loss. Raises TrainError on zero rows or a row without one."""
    trainer, backend, held = build_sft_trainer(base_path, rows, held_out, lora, cfg, out_dir,
                                               chat_template_kwargs=chat_template_kwargs, device=device,
                                               backend=backend)
    return _run(trainer, "sft", Path(out_dir), backend, held, None, on_step)


def build_dpo_trainer(base_path: str, sft_adapter_dir: str, rows, held_out, lora: LoraSettings, cfg: DpoSettings,
                      out_dir, *, chat_template_kwargs=None, device="auto"):
    """The DPOTrainer `train_dpo` runs, and its backend (exposed for tests and the benchmark).

    The policy is the SFT adapter, trainable; ref_model stays None so trl uses a frozen copy of
    that adapter ("ref") over the same base weights: the SFT policy is the reference without a
    second copy of the model."""
    train = _dpo_rows(rows, "rows", chat_template_kwargs)
    if not train:
        raise TrainError("rows: no DPO pairs to train on")
    evals = _dpo_rows(held_out, "held_out", chat_template_kwargs)
    if not (Path(sft_adapter_dir) / "adapter_config.json").is_file():
        raise TrainError(f"sft_adapter_dir: {sft_adapter_dir} has no adapter_config.json")
    device = _pick_device(device)
    backend, bf16 = _backend(device), _use_bf16("auto", device)
    trl = _trl(backend)
    model, tokenizer = _load(base_path, device, backend, cfg.max_length, bf16, adapter_dir=sft_adapter_dir)
    args = trl.DPOConfig(num_train_epochs=cfg.epochs, learning_rate=cfg.lr, beta=cfg.beta, lr_scheduler_type="cosine",
                     warmup_steps=cfg.warmup_ratio, per_device_train_batch_size=cfg.batch_size,
                     per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                     max_length=cfg.max_length, optim=_optim("auto", device), logging_steps=1,
                     **_common_args(Path(out_dir), device, bf16, bool(evals), cfg.max_steps))
    trainer = trl.DPOTrainer(model=model, ref_model=None, args=args, train_dataset=_dataset(train),
                         eval_dataset=_dataset(evals), processing_class=tokenizer)
    return trainer, backend, bool(evals)


def train_dpo(base_path: str, sft_adapter_dir: str, rows, held_out, lora: LoraSettings, cfg: DpoSettings, out_dir,
              *, chat_template_kwargs: dict | None = None, device: str = "auto", on_step=None) -> StageResult:
    """Continue the SFT adapter with DPO on conversational prompt/chosen/rejected `rows`; the
    reference is the SFT policy (see `build_dpo_trainer`). Saves `out_dir/adapter` (the trained
    adapter only). `lora` is the SFT stage's settings; the adapter's own config is what trains."""
    trainer, backend, held = build_dpo_trainer(base_path, sft_adapter_dir, rows, held_out, lora, cfg, out_dir,
                                               chat_template_kwargs=chat_template_kwargs, device=device)
    return _run(trainer, "dpo", Path(out_dir), backend, held, ["default"], on_step)


# --- after training -----------------------------------------------------------------------------

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def merge_adapter(base_path: str, adapter_dir: str, out_dir, *, dtype: str = "bf16") -> str:
    """Merge `adapter_dir` into the full-precision base (peft merge_and_unload) and save the result
    in `dtype` with the tokenizer: a plain transformers model directory. Returns its path."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise TrainError(f"dtype: {dtype!r} is not a merge dtype (allowed: {', '.join(_DTYPES)})")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise TrainError(f"adapter_dir: {adapter_dir} has no adapter_config.json")
    # merge in fp32, not into 4-bit weights: the merged model must not carry quantisation error
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = merged.to(getattr(torch, _DTYPES[dtype]))
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file()
                                  else base_path).save_pretrained(str(out))
    return str(out)
