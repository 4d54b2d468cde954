"""tune/persona/train.py on the toy zoo's qwen3-b: tiny SFT and DPO runs on CPU, then merged and plotted."""
import shutil

import pytest
from pydantic import ValidationError

from tune.persona.report import plot_losses
from tune.persona.merge import merge_adapter
from tune.persona.train import (DpoSettings, LoraSettings, SftSettings, StageResult, TrainError, build_dpo_trainer,
                                build_sft_trainer, train_dpo, train_sft)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NO_THINK = {"enable_thinking": False}
LORA = LoraSettings(r=4, alpha=8)
SFT = SftSettings(batch_size=2, grad_accum=1, max_steps=3, max_length=128)
DPO = DpoSettings(batch_size=2, grad_accum=1, max_steps=3, max_length=128)

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": f"Where is your cafe? ({i})"},
                  {"role": "assistant", "content": f"In the Jeonju hanok village, 느티나무 커피. ({i})"}]}
    for i in range(6)
]
PAIRS = [
    {"prompt": [{"role": "user", "content": f"Who are you? ({i})"}],
     "chosen": [{"role": "assistant", "content": "I'm Seo-yun, I run a cafe in Jeonju."}],
     "rejected": [{"role": "assistant", "content": "I am an AI language model."}]}
    for i in range(4)
]
# Qwen3-style: the final assistant turn and the no-thinking generation prompt carry an empty think block
QWEN3_LIKE = (
    "{{- bos_token -}}{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n"
    "{%- if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif -%}"
    "{{ m['content'] }}<|im_end|>\n{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def base(zoo):
    return str(zoo.zoo_dir / "qwen3-b")


@pytest.fixture(scope="module")
def sft_result(base, tmp_path_factory):
    return train_sft(base, CONVERSATIONS, CONVERSATIONS[:2], LORA, SFT, tmp_path_factory.mktemp("sft"),
                     chat_template_kwargs=NO_THINK)


def _targets(trainer) -> list[tuple[str, str]]:
    """(whole sequence, trained tokens) per row of the trainer's tokenized train dataset."""
    tok = trainer.processing_class
    out = []
    for row in trainer.train_dataset:
        ids = row["input_ids"]
        trained = [t for t, label in zip(ids, row["labels"]) if label != -100]  # -100: no loss
        out.append((tok.decode(ids), tok.decode(trained)))
    return out


def test_defaults_are_the_seed_recipe():
    lora, sft, dpo = LoraSettings(), SftSettings(), DpoSettings()
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.modules_to_save, lora.qlora) == (
        64, 128, 0.05, "all-linear", [], True)
    assert (sft.epochs, sft.lr, sft.scheduler, sft.warmup_ratio, sft.batch_size, sft.grad_accum, sft.max_length,
            sft.packing) == (3, 1e-4, "cosine", 0.05, 16, 2, 1024, False)
    assert (dpo.epochs, dpo.lr, dpo.beta, dpo.batch_size, dpo.grad_accum, dpo.warmup_ratio) == (2, 5e-6, 0.1, 4, 2, 0.1)


@pytest.mark.parametrize("cls, field, value", [(SftSettings, "lr", 0), (SftSettings, "lr", -1e-4),
                                                (LoraSettings, "r", 0), (DpoSettings, "beta", 0)])
def test_bad_settings_name_the_field(cls, field, value):
    with pytest.raises(ValidationError) as err:
        cls(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_sft_logs_loss_and_saves_adapter(sft_result):
    assert isinstance(sft_result, StageResult)
    assert (sft_result.stage, sft_result.backend, sft_result.steps) == ("sft", "peft", 3)
    losses = [r["loss"] for r in sft_result.log if "loss" in r]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert sft_result.eval_loss is not None and sft_result.eval_loss > 0
    assert sft_result.tokens > 0 and sft_result.tokens_per_s > 0
    # what really ran, as the GPU benchmark reports it: on CPU torch's AdamW, no checkpointing, no GPU peak
    assert (sft_result.optim, sft_result.gradient_checkpointing, sft_result.peak_gpu_mem_gib) == ("AdamW", "off", None)
    assert (shutil.os.path.isfile(f"{sft_result.adapter_dir}/adapter_config.json")
            and shutil.os.path.isfile(f"{sft_result.adapter_dir}/adapter_model.safetensors"))


def test_sft_targets_are_the_assistant_turn_without_think_tags(base, tmp_path):
    trainer, _, _ = build_sft_trainer(base, CONVERSATIONS, [], LORA, SFT, tmp_path, chat_template_kwargs=NO_THINK)
    for whole, trained in _targets(trainer):
        assert "<think>" not in whole and "<think>" not in trained
        assert trained.startswith("In the Jeonju hanok village") and trained.endswith("<|im_end|>\n")
        assert "Where is your cafe" not in trained  # the user turn is context, not a target


def test_think_block_of_a_qwen3_template_stays_out_of_the_targets(base, tmp_path):
    model_dir = tmp_path / "qwen3-think"
    shutil.copytree(base, model_dir)
    (model_dir / "chat_template.jinja").write_text(QWEN3_LIKE)
    trainer, _, _ = build_sft_trainer(str(model_dir), CONVERSATIONS, [], LORA, SFT, tmp_path / "out",
                                      chat_template_kwargs=NO_THINK)
    for whole, trained in _targets(trainer):
        assert "<think>" in whole            # the template did render it, as context
        assert "<think>" not in trained and "</think>" not in trained
        assert trained.startswith("In the Jeonju hanok village")


def test_dpo_starts_from_the_sft_adapter_without_a_second_model(base, sft_result, tmp_path):
    trainer, backend, _ = build_dpo_trainer(base, sft_result.adapter_dir, PAIRS, [], LORA, DPO, tmp_path,
                                            chat_template_kwargs=NO_THINK)
    assert trainer.ref_model is None and backend == "peft"
    # trl's reference for a PEFT policy: a frozen copy of the loaded SFT adapter on the same base weights
    assert set(trainer.model.peft_config) == {"default", "ref"}
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and not any(p.requires_grad for p in ref.values())


def test_dpo_logs_rewards_and_loss_then_merge_reloads_and_generates(base, sft_result, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dpo = train_dpo(base, sft_result.adapter_dir, PAIRS, PAIRS[:2], LORA, DPO, tmp_path / "dpo",
                    chat_template_kwargs=NO_THINK)
    assert dpo.stage == "dpo" and dpo.steps == 3 and dpo.eval_loss is not None
    assert any("rewards/margins" in r for r in dpo.log) and all(r["loss"] > 0 for r in dpo.log if "loss" in r)
    assert sorted(p.name for p in (tmp_path / "dpo" / "adapter").iterdir() if p.is_dir()) == []  # no "ref" adapter

    merged = merge_adapter(base, dpo.adapter_dir, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    assert model.dtype == torch.bfloat16 and not hasattr(model, "peft_config")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True, **NO_THINK)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    png = plot_losses([sft_result, dpo], tmp_path / "losses.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embeddings_train_beside_the_adapter_and_the_tied_head_follows_them_into_the_merge(base, tmp_path):
    """modules_to_save=["embed_tokens"] (the demo's setting): the toy's output head is tied to the
    embeddings, which LoRA never reaches; trained in full they must stay tied, in training and merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = LoraSettings(r=4, alpha=8, modules_to_save=["embed_tokens"])
    sft = train_sft(base, CONVERSATIONS, [], lora, SFT.model_copy(update={"lr": 1e-2}), tmp_path / "sft",
                    chat_template_kwargs=NO_THINK)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), sft.adapter_dir).eval()
    inner = tuned.base_model.model
    assert torch.equal(inner.lm_head.weight, inner.model.embed_tokens.modules_to_save["default"].weight)
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(base, sft.adapter_dir, tmp_path / "m", dtype="fp32"))
    original = AutoModelForCausalLM.from_pretrained(base)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()   # still tied
    assert not torch.equal(merged.model.embed_tokens.weight, original.model.embed_tokens.weight)  # and trained
    ids = torch.tensor([[1, 3, 100, 200, 300, 2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)


def test_bad_rows_and_paths_are_one_line_errors(base, sft_result, tmp_path):
    with pytest.raises(TrainError, match=r"^rows: no SFT rows"):
        train_sft(base, [], [], LORA, SFT, tmp_path)
    no_answer = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(TrainError, match=r"^rows\[0\]: no non-empty assistant turn"):
        train_sft(base, no_answer, [], LORA, SFT, tmp_path)
    with pytest.raises(TrainError, match=r"^sft_adapter_dir: .* has no adapter_config.json"):
        train_dpo(base, str(tmp_path), PAIRS, [], LORA, DPO, tmp_path)
    with pytest.raises(TrainError, match=r"^rows\[0\]: expected conversational"):
        train_dpo(base, sft_result.adapter_dir, [{"prompt": "hi"}], [], LORA, DPO, tmp_path)
    with pytest.raises(TrainError, match=r"^device: 'tpu'"):
        train_sft(base, CONVERSATIONS, [], LORA, SFT, tmp_path, device="tpu")


def test_tokens_are_counted_from_the_rows_when_the_trainer_logs_none():
    """unsloth's trainer logs no num_tokens (seen on the H200: tokens/s read 0); the count then comes
    from the tokenized rows the steps consumed. A stand-in trainer: only its count inputs matter."""
    from types import SimpleNamespace

    from datasets import Dataset

    from tune.persona.train import _tokens

    data = Dataset.from_list([{"input_ids": [1] * n} for n in (10, 20, 30, 40)])  # 100 tokens an epoch
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    trainer = lambda steps, history: SimpleNamespace(  # noqa: E731
        state=SimpleNamespace(global_step=steps, log_history=history), train_dataset=data, args=args)
    assert _tokens(trainer(2, [{"loss": 1.0}])) == 100          # one whole epoch
    assert _tokens(trainer(3, [{"loss": 1.0}])) == 150          # and half of the next, at the mean length
    assert _tokens(trainer(3, [{"num_tokens": 77.0}])) == 77    # trl's own count wins when it has one
