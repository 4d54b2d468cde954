"""tune/persona/merge.py: an adapter merged into the toy zoo's qwen3-b answers as base + adapter did."""
import pytest

from tune.persona.merge import merge_adapter
from tune.persona.train import TrainError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(zoo):
    return str(zoo.zoo_dir / "qwen3-b")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A LoRA adapter with non-zero weights (peft's init_lora_weights=False), saved as training saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    return str(out)


@pytest.mark.parametrize("dtype, torch_dtype, atol", [("fp32", "float32", 1e-4), ("bf16", "bfloat16", 0.25)])
def test_the_merged_model_is_a_plain_dir_answering_like_base_plus_adapter(base, adapter, tmp_path, dtype,
                                                                          torch_dtype, atol):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = merge_adapter(base, adapter, tmp_path / "merged", dtype=dtype)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not hasattr(merged, "peft_config") and merged.dtype == getattr(torch, torch_dtype)
    assert AutoTokenizer.from_pretrained(merged_dir).vocab_size == AutoTokenizer.from_pretrained(base).vocab_size
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    original = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.tensor([[1, 3, 100, 200, 300, 2]])
    with torch.no_grad():
        want, got, before = tuned(ids).logits, merged.float()(ids).logits, original(ids).logits
    torch.testing.assert_close(got, want, atol=atol, rtol=0.05)
    assert (want - before).abs().max() > 10 * atol  # the adapter changed the answer, so the check means something


def test_bad_dtype_and_missing_adapter_are_one_line_errors(base, adapter, tmp_path):
    with pytest.raises(TrainError, match=r"^dtype: 'int8' is not a merge dtype \(allowed: bf16, fp16, fp32\)$"):
        merge_adapter(base, adapter, tmp_path / "m", dtype="int8")
    with pytest.raises(TrainError, match=r"^adapter_dir: .* has no adapter_config.json$"):
        merge_adapter(base, str(tmp_path), tmp_path / "m")
