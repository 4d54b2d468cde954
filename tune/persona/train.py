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
    merged = merge_adapter(base, dpo.adapter_dir, out / "merged")      # tune/persona/merge.py: plain HF dir

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
    # QLoRA: on CUDA the frozen base is loaded in 4-bit NF4 (bitsandbytes, or unsloth's own 4-bit
    # load); False trains the adapter over 16-bit base weights (more memory, no dequantisation cost).
    # On CPU the base is always fp32.
    qlora: bool = True


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
    peak_gpu_mem_gib: float | None = None  # torch's peak allocated CUDA memory in train(); None on CPU
    optim: str = ""                  # the optimizer class that ran (seed 001: adamw_8bit = AdamW8bit)
    gradient_checkpointing: str = ""  # "unsloth" | "torch" | "off", as the model really ran
    device: str = ""                 # the CUDA device's name (`--plan` matches it to a GPU type) or "cpu"

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
    return ALL_LINEAR if backend == "unsloth" and lora.target_modules == "all-linear" else lora.target_modules


def _trl(backend: str):
    """The trl module, with a torch log-prob kernel where Triton is missing (CPU; see trl_cpu)."""
    from cluster.models.loading import skip_unused_sklearn

    skip_unused_sklearn()  # trl imports transformers' models
    if backend == "unsloth":
        import unsloth  # noqa: F401  (it patches transformers and trl, so it goes first)
    import trl

    from tune.persona.trl_cpu import ensure_logprob_kernel

    ensure_logprob_kernel()
    return trl


def _load(base_path: str, device: str, backend: str, max_length: int, bf16: bool, adapter_dir: str | None = None,
          qlora: bool = True):
    """(model, tokenizer) for training: the base (4-bit on CUDA when `qlora`), or base + `adapter_dir`
    made trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(base_path).is_dir():
        raise TrainError(f"base_path: {base_path} is not a model directory")
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # noqa: PLC0415 (CUDA only)

        # an adapter dir loads base + adapter (unsloth reads base_model_name_or_path from it)
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=adapter_dir or base_path,
                                                             max_seq_length=max_length, load_in_4bit=qlora,
                                                             dtype=None)
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    kwargs: dict = {"dtype": torch.float32}
    quantized = False
    if device == "cuda":
        kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float16, "device_map": {"": 0}}
        if qlora and _has("bitsandbytes"):
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
    `on_step(step)` runs after every optimizer step (the stage's heartbeat), with 0 once the trainer
    is built and -1 once training is done."""
    import torch

    if on_step is not None:
        trainer.add_callback(_step_callback(on_step))
        on_step(0)  # model loaded and trainer built: setup and the first step each get the stall limit
    if cuda := torch.cuda.is_available() and not trainer.args.use_cpu:
        torch.cuda.reset_peak_memory_stats()
    ran_with: list = []
    trainer.add_callback(_step_callback(lambda step: ran_with or ran_with.extend(_ran_with(trainer))))
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    if on_step is not None:
        on_step(-1)  # training done: the held-out loss and the save are not steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
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
        row = {"step": entry.get("step"), **{name: entry[key] for key, name in
                                             (("loss", "loss"), ("eval_loss", "eval_loss"), ("learning_rate", "lr"))
                                             if key in entry}}
        row.update({k: v for k, v in entry.items() if k.startswith("rewards/")})
        # the final evaluate() repeats the last periodic eval at the same step
        if len(row) > 1 and "train_runtime" not in entry and (not log_rows or row != log_rows[-1]):
            log_rows.append(row)
    tokens = _tokens(trainer)
    result = StageResult(stage=stage, adapter_dir=str(adapter_dir), log=log_rows,
                         train_loss=float(output.training_loss), eval_loss=eval_loss, seconds=seconds, tokens=tokens,
                         tokens_per_s=tokens / seconds if seconds > 0 else 0.0, backend=backend,
                         steps=int(trainer.state.global_step), peak_gpu_mem_gib=peak,
                         device=torch.cuda.get_device_name() if cuda else "cpu")
    result.optim, result.gradient_checkpointing = ran_with or _ran_with(trainer)
    log.info("%s: %d steps, loss %.4f, %d tokens in %.1f s (%.0f tok/s, %s)", stage, result.steps,
             result.train_loss, tokens, seconds, result.tokens_per_s, backend)
    return result


def _ran_with(trainer) -> tuple[str, str]:
    """(optimizer, activation checkpointing: "unsloth" | "torch" | "off") as the trainer really ran
    them; read during training (unsloth turns its checkpointing off when training ends)."""
    import torch.utils.checkpoint

    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    name = type(opt).__name__
    if type(opt).__module__.startswith("bitsandbytes"):  # adamw_8bit is bitsandbytes' AdamW, optim_bits 8
        name = f"bitsandbytes {name} {getattr(getattr(opt, 'args', None), 'optim_bits', 32)}-bit"
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    # unsloth_zoo swaps torch's checkpoint function for its offloading one when it is on
    ckpt = ("off" if not getattr(model, "is_gradient_checkpointing", False) else
            "unsloth" if torch.utils.checkpoint.checkpoint.__name__ == "unsloth_checkpoint" else "torch")
    return name, ckpt


def _tokens(trainer) -> int:
    """Non-padding tokens trained on: trl's running count, else (unsloth's trainer logs none) the
    tokenized rows the steps consumed, whole epochs exactly and a partial one at the mean length."""
    counted = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)
    data = trainer.train_dataset
    if counted or data is None or "input_ids" not in data.column_names or not len(data):
        return int(counted or getattr(trainer, "_total_train_tokens", 0))
    lengths = [len(ids) for ids in data["input_ids"]]
    args = trainer.args
    rows = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    epochs, rest = divmod(rows, len(lengths))
    return int(epochs * sum(lengths) + rest * sum(lengths) / len(lengths))


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
    model, tokenizer = _load(base_path, device, backend, cfg.max_length, bf16, qlora=lora.qlora)
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
    model, tokenizer = _load(base_path, device, backend, cfg.max_length, bf16, adapter_dir=sft_adapter_dir,
                             qlora=lora.qlora)
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
