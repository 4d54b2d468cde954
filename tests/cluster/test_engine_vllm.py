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


def test_tensor_parallel_args_turn_off_multicast_all_reduce_unless_asked(monkeypatch):
    # what the H200 pair showed (BENCHMARKS.md, "Two GPUs"): with NVLink multicast off, vLLM 0.26's
    # compiled all-reduce + RMSNorm fusion (FlashInfer "mnnvl") crashed both TP workers
    import os

    from cluster.engine_vllm import tensor_parallel_args

    monkeypatch.delenv("VLLM_ALLREDUCE_USE_SYMM_MEM", raising=False)
    one = tensor_parallel_args({"tensor_parallel_size": 1})
    assert "compilation_config" not in one and "VLLM_ALLREDUCE_USE_SYMM_MEM" not in os.environ
    two = tensor_parallel_args({"tensor_parallel_size": 2, "model": "/m"})
    assert two["compilation_config"] == {"pass_config": {"fuse_allreduce_rms": False}}
    assert os.environ["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    # the user's own compilation settings are kept, and their own pass setting wins
    user = tensor_parallel_args({"tensor_parallel_size": 2, "compilation_config": {"level": 3, "pass_config": {
        "fuse_allreduce_rms": True}}})
    assert user["compilation_config"] == {"level": 3, "pass_config": {"fuse_allreduce_rms": True}}
    mixed = tensor_parallel_args({"tensor_parallel_size": 2, "compilation_config": {"pass_config": {"x": 1}}})
    assert mixed["compilation_config"]["pass_config"] == {"fuse_allreduce_rms": False, "x": 1}
    assert "compilation_config" not in tensor_parallel_args({"tensor_parallel_size": 2}, multicast=True)
