"""cluster/engine_vllm.py: the rule for loading another checkpoint into a running vLLM engine
(vLLM itself runs on the GPU machine: tests/bench/bench_vllm_dna.py, BENCHMARKS.md)."""
import json


def test_engine_signature_allows_a_swap_only_for_the_same_shape_tokenizer_and_settings(tmp_path):
    import shutil

    from cluster.engine_vllm import engine_signature

    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text(json.dumps({"_name_or_path": "a", "hidden_size": 64, "num_hidden_layers": 2}))
    (a / "tokenizer.json").write_text('{"vocab": 1}')
    (a / "generation_config.json").write_text('{"eos_token_id": 2}')
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "config.json").write_text(json.dumps({"_name_or_path": "b", "hidden_size": 64, "num_hidden_layers": 2}))
    args = dict(dtype="bfloat16", num_gpus=1)
    assert engine_signature(str(a), **args) == engine_signature(str(b), **args)  # another checkpoint, same shape
    assert engine_signature(str(a), **args) != engine_signature(str(a), dtype="float16", num_gpus=1)
    (b / "generation_config.json").write_text('{"eos_token_id": 3}')
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # stops elsewhere
    (b / "generation_config.json").write_text('{"eos_token_id": 2}')
    (b / "tokenizer.json").write_text('{"vocab": 2}')
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # reads prompts differently
    (b / "tokenizer.json").write_text('{"vocab": 1}')
    (b / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 3}))
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # another shape
    (b / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                               "quantization_config": {"quant_method": "compressed-tensors"}}))
    assert engine_signature(str(b), **args) is None  # quantized kernels repack at load: never swapped
    assert engine_signature("org/hf-id", **args) is None  # not a local folder
