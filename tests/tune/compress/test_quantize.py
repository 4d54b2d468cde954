import json
from pathlib import Path

import pytest

from tune.compress.prune import remove_layers
from tune.compress.quantize import (
    SCHEMES,
    QuantizeError,
    check_scheme,
    choose_group_size,
    load_quantized,
    quantize,
    quantize_elsewhere,
    scheme_problem,
    weights_size_bytes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CORPUS = Path(__file__).resolve().parents[3] / "cluster" / "models" / "zoo_corpus"
CALIBRATION_SAMPLES = 8
MAX_SEQ_LENGTH = 64
# Top-1 next-token agreement with the unquantized model, over every token of the 8 calibration
# texts (512 tokens). Measured on the zoo (8 samples, 64 tokens, group size 32): W8A16 0.990-0.998,
# W4A16 0.906-0.953 over llama-a, qwen3-b, exaone4-c. For scale: naive per-tensor round-to-nearest
# int4 of llama-a gives 0.78, its fine-tuned child llama-a-continued 0.61, another base 0.03.
MIN_TOP1_AGREEMENT = {"W8A16": 0.97, "W4A16": 0.85}


@pytest.fixture(scope="module")
def texts():
    """The first U/A dialogue of each topic: 8 calibration texts."""
    blocks = []
    for f in sorted(CORPUS.glob("*.txt")):
        blocks += [b.strip() for b in f.read_text(encoding="utf-8").split("\n\n") if b.strip()][:1]
    return blocks[:CALIBRATION_SAMPLES]


def _load(zoo, model_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / model_id
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _top1(model, tokenizer, texts):
    import torch

    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=MAX_SEQ_LENGTH))
                          .logits[0].argmax(-1) for t in texts])


def _generate(model, tokenizer) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What should I cook tonight?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)


@pytest.fixture(scope="module")
def quantized(zoo, texts, tmp_path_factory):
    """(model_id, scheme) -> (QuantResult, the unquantized model's top-1 tokens), made once."""
    made = {}

    def get(model_id, scheme):
        if (model_id, scheme) not in made:
            model, tok = _load(zoo, model_id)
            reference = _top1(model, tok, texts)  # before: quantize changes the model in place
            out = tmp_path_factory.mktemp(f"{model_id}-{scheme}") / "model"
            made[model_id, scheme] = (quantize(model, tok, scheme, texts, out,
                                               num_calibration_samples=CALIBRATION_SAMPLES,
                                               max_seq_length=MAX_SEQ_LENGTH), reference)
        return made[model_id, scheme]

    return get


@pytest.mark.parametrize("scheme", ["W8A16", "W4A16"])
@pytest.mark.parametrize("model_id", ["llama-a", "exaone4-c"])
def test_gptq_candidate_reloads_generates_and_stays_close(zoo, texts, quantized, model_id, scheme):
    from transformers import AutoTokenizer

    q, reference = quantized(model_id, scheme)
    assert q.scheme == scheme and q.seconds > 0
    qconfig = json.loads((Path(q.path) / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == "pack-quantized"
    # the zoo's Linear in_features are 96 and 256: 128 divides neither's gcd, 32 is the largest that does
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # calibration runs on the GPU when there is one
    assert q.details == {"group_size": 32, "strategy": "group", "format": "pack-quantized", "device": device,
                         "calibration_samples": CALIBRATION_SAMPLES, "max_seq_length": MAX_SEQ_LENGTH}
    fp32_bytes = weights_size_bytes(zoo.zoo_dir / model_id)  # the zoo saves float32
    assert q.size_bytes == weights_size_bytes(q.path) < 0.6 * fp32_bytes

    model = load_quantized(q.path)
    tok = AutoTokenizer.from_pretrained(q.path)
    assert not model.training
    assert _generate(model, tok).strip()
    agreement = float((_top1(model, tok, texts) == reference).float().mean())
    assert agreement >= MIN_TOP1_AGREEMENT[scheme], f"{model_id} {scheme}: top-1 agreement {agreement:.3f}"


def test_none_round_trips_identical_logits(zoo, texts, tmp_path):
    import torch

    model, tok = _load(zoo, "llama-a")
    q = quantize(model, tok, "none", [], tmp_path / "model")  # needs no calibration texts
    assert q.details["format"] is None and q.size_bytes == weights_size_bytes(q.path) > 0
    assert "quantization_config" not in json.loads((tmp_path / "model" / "config.json").read_text())
    reloaded = load_quantized(q.path)
    batch = tok(texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


@pytest.mark.parametrize("scheme", ["FP8", "FP8_DYNAMIC"])
def test_fp8_is_refused_on_cpu_with_a_one_line_reason(zoo, texts, tmp_path, scheme):
    model, tok = _load(zoo, "llama-a")
    with pytest.raises(QuantizeError) as err:
        quantize(model, tok, scheme, texts, tmp_path / "model")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"quant: scheme {scheme} needs a CUDA GPU")
    assert ">= 8.9" in msg and "CPU only" in msg
    assert not (tmp_path / "model").exists()  # checked before anything is written


def test_scheme_problem_by_compute_capability():
    for scheme in ("FP8", "FP8_DYNAMIC"):
        assert scheme_problem(scheme, (9.0,)) is None
        assert scheme_problem(scheme, (8.9, 9.0)) is None
        assert "this node has compute capability 8.6" in scheme_problem(scheme, (8.6,))
        # a trial may land on any GPU of the node: one Ampere card is enough to refuse
        assert "9.0, 8.0" in scheme_problem(scheme, (9.0, 8.0))
    for scheme in ("none", "W8A16", "W4A16"):
        assert scheme_problem(scheme, ()) is None and scheme_problem(scheme, (7.5,)) is None
    check_scheme("FP8", (9.0,))  # no exception


def test_unknown_scheme_lists_the_allowed_ones(zoo, tmp_path):
    assert scheme_problem("W3A16", (9.0,)) == f"scheme 'W3A16' is unknown (allowed: {', '.join(SCHEMES)})"
    with pytest.raises(QuantizeError, match=r"^quant: scheme 'int4' is unknown \(allowed: none, W8A16"):
        check_scheme("int4", ())
    model, tok = _load(zoo, "llama-a")
    with pytest.raises(QuantizeError, match="unknown"):
        quantize(model, tok, "fp8", ["hi"], tmp_path / "model", cuda_capabilities=(9.0,))


@pytest.mark.parametrize("scheme", ["W8A16", "W4A16"])
def test_empty_calibration_is_refused_naming_the_argument(zoo, tmp_path, scheme):
    model, tok = _load(zoo, "llama-a")
    for empty in ([], ["", "  \n"]):
        with pytest.raises(QuantizeError, match=rf"^quant: calibration_texts: empty \(scheme {scheme} calibrates"):
            quantize(model, tok, scheme, empty, tmp_path / "model")


def test_bad_arguments_are_one_line_naming_them(zoo, texts, tmp_path):
    model, tok = _load(zoo, "llama-a")
    with pytest.raises(QuantizeError, match=r"^quant: num_calibration_samples: 0 must be a positive integer$"):
        quantize(model, tok, "W8A16", texts, tmp_path / "a", num_calibration_samples=0)
    with pytest.raises(QuantizeError, match=r"^quant: max_seq_length: 1.5 must be a positive integer$"):
        quantize(model, tok, "W8A16", texts, tmp_path / "a", max_seq_length=1.5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "model.safetensors").write_bytes(b"stale")  # would be counted in size_bytes
    with pytest.raises(QuantizeError, match=r"^quant: out_dir: .*busy exists and is not an empty directory$"):
        quantize(model, tok, "none", texts, tmp_path / "busy")
    with pytest.raises(QuantizeError, match=r"^quant: path: .* has no config.json"):
        load_quantized(tmp_path / "busy")


def test_pruned_in_memory_model_keeps_its_own_config(zoo, texts, tmp_path):
    # llmcompressor rewrites the saved config.json from the one at config._name_or_path, which for
    # a model pruned in memory is the unpruned base: 6 layers saved, 4 present, no reload.
    model, tok = _load(zoo, "exaone4-c")
    remove_layers(model, [1, 3])
    kept_types = list(model.config.layer_types)
    q = quantize(model, tok, "W8A16", texts, tmp_path / "model", num_calibration_samples=2, max_seq_length=32)
    assert model.config._name_or_path == str(zoo.zoo_dir / "exaone4-c")  # restored afterwards
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 4 and saved["layer_types"] == kept_types
    reloaded = load_quantized(q.path)
    assert len(reloaded.model.layers) == 4
    assert _generate(reloaded, tok).strip()


def test_fp8_dynamic_recipe_and_save_run_when_the_capability_is_there(zoo, tmp_path):
    # Claims a Hopper GPU so the FP8 recipe, save and reload run on this CPU-only machine (FP8
    # weights are computed and stored on CPU fine; the claim only skips the placement check).
    # The model has no path at all, as one built in memory.
    model, tok = _load(zoo, "llama-a")
    model.config._name_or_path = ""
    q = quantize(model, tok, "FP8_DYNAMIC", [], tmp_path / "model", cuda_capabilities=(9.0,))
    assert q.details["format"] == "float-quantized" and q.details["calibration_samples"] == 0
    assert q.size_bytes < 0.6 * weights_size_bytes(zoo.zoo_dir / "llama-a")
    assert _generate(load_quantized(q.path), tok).strip()


def test_choose_group_size_divides_every_targeted_linear():
    import torch

    def net(*widths):
        layers = torch.nn.ModuleDict({f"l{i}": torch.nn.Linear(w, 8) for i, w in enumerate(widths)})
        layers["lm_head"] = torch.nn.Linear(100, 8)  # ignored: never quantized
        return layers

    assert choose_group_size(net(4096, 14336)) == 128
    assert choose_group_size(net(4096, 10048)) == 64  # an FFN pruned to 10048
    assert choose_group_size(net(96, 256)) == 32  # the zoo
    assert choose_group_size(net(96, 100)) is None  # per-channel scales


def test_quantize_elsewhere_runs_in_another_interpreter_and_measures_there(zoo, texts, tmp_path):
    """The child is a real process of `python` (here this environment's own; on the GPU machine an
    environment with llmcompressor beside the trial's vLLM one, BENCHMARKS.md)."""
    import sys

    model, tok = _load(zoo, "llama-a")
    model.save_pretrained(tmp_path / "healed")
    tok.save_pretrained(tmp_path / "healed")
    waits = []
    q, val_loss = quantize_elsewhere(sys.executable, tmp_path / "healed", "W8A16", texts, tmp_path / "model",
                                     holdout=texts[:2], max_length=MAX_SEQ_LENGTH,
                                     num_calibration_samples=CALIBRATION_SAMPLES, max_seq_length=MAX_SEQ_LENGTH,
                                     on_wait=lambda: waits.append(1))
    assert q.scheme == "W8A16" and q.path == str(tmp_path / "model") and waits
    assert json.loads((tmp_path / "model" / "config.json").read_text())["quantization_config"]["format"] \
        == "pack-quantized"
    assert 0 < val_loss < 20 and q.size_bytes == weights_size_bytes(q.path)
    assert _generate(load_quantized(q.path), tok)  # the candidate loads and generates here too


def test_quantize_elsewhere_failures_are_one_line(zoo, texts, tmp_path):
    import sys

    with pytest.raises(QuantizeError, match=r"quant: python: /nonexistent/python: cannot start it"):
        quantize_elsewhere("/nonexistent/python", tmp_path, "W8A16", texts, tmp_path / "m", holdout=[], max_length=8)
    with pytest.raises(QuantizeError, match=r"quant: python: .*: exit 1: quant: .*empty: no config.json") as info:
        quantize_elsewhere(sys.executable, tmp_path / "empty", "W8A16", texts, tmp_path / "m2", holdout=[],
                           max_length=8)
    assert "\n" not in str(info.value)
    with pytest.raises(QuantizeError, match=r"FP8_DYNAMIC needs a CUDA GPU"):  # refused before any child
        quantize_elsewhere(sys.executable, tmp_path, "FP8_DYNAMIC", texts, tmp_path / "m3", holdout=[], max_length=8)
