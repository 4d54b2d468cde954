"""cluster/engines/engine_vllm.py: the rule for loading another checkpoint into a running vLLM engine
(vLLM itself runs on the GPU machine: tests/bench/bench_vllm_dna.py, BENCHMARKS.md)."""
import json

import pytest


def test_engine_signature_allows_a_swap_only_for_the_same_shape_tokenizer_and_settings(tmp_path):
    import shutil

    from cluster.engines.engine_vllm import engine_signature

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

    from cluster.engines.engine_vllm import tensor_parallel_args

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


def test_vllm_generates_with_garbage_collection_off_and_turns_it_back_on(monkeypatch):
    # a stand-in `vllm` (vLLM needs a CUDA GPU): what its LLM.generate saw of the collector, and
    # that the collector is as it was afterwards, also where generate raises
    import gc
    import sys
    import types

    from cluster.engines.engine_vllm import VllmModel

    seen = []

    class LLM:
        def generate(self, prompts, params, use_tqdm):
            seen.append(gc.isenabled())
            if prompts[0]["prompt_token_ids"] == [0]:
                raise RuntimeError("engine died")
            done = types.SimpleNamespace(text=" hi ", token_ids=[5, 6, 2])
            return [types.SimpleNamespace(outputs=[done]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    model = VllmModel.__new__(VllmModel)
    model.llm = LLM()
    assert gc.isenabled()
    out = model.generate([[1, 2], [3]], max_new_tokens=3)
    assert (out.texts, out.new_tokens, seen, gc.isenabled()) == (["hi", "hi"], [3, 3], [False], True)
    with pytest.raises(RuntimeError, match="engine died"):
        model.generate([[0]], max_new_tokens=3)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:  # a caller that turned it off (the timing phase) finds it off
        model.generate([[1]], max_new_tokens=3)
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- a vLLM engine that dies while it starts ------------------------------------------------------
# vLLM cannot run on this machine (no GPU), so these tests run a stand-in `vllm` package: its
# `LLM()` starts real processes the way vLLM's multiprocessing engine does (an engine core that
# starts two tensor-parallel workers, titled as vLLM titles its own), and its workers die with the
# CUDA error the H200 pair showed, leaving the engine core waiting for ever (BENCHMARKS.md, "Two
# GPUs"). The load runs in a process of its own whose output goes to a file, as a Ray worker's does.
STANDIN = '''
"""A stand-in for vllm's offline engine (tests/cluster/engines/test_engine_vllm.py)."""
import os
import subprocess
import sys
import time


def _titled(title, code):  # argv[0] is the title, as setproctitle leaves vLLM's processes
    return subprocess.Popen([title, "-c", code], executable=os.environ["STANDIN_PYTHON"])


def _until_orphaned():
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.1)


def worker(rank, dies_after_s):
    if dies_after_s is None:
        _until_orphaned()
        return
    time.sleep(dies_after_s)
    # one write: both workers die at once, and print's separate newline could land inside the other's line
    sys.stderr.write(f"(Worker_TP{rank} pid={os.getpid()}) ERROR 11-30 12:00:01 [multiproc_executor.py:611] "
                     "WorkerProc hit an exception.\\nRuntimeError: CUDA error: an illegal memory access was "
                     "encountered\\nCUDA kernel errors might be asynchronously reported at some other API call.\\n")
    sys.stderr.flush()
    sys.exit(1)


def engine_core(dies_after_s, fails_after_s=None, killed_after_s=None):
    if killed_after_s is not None:  # ended from outside (SIGKILL: the OOM killer, round_kill.py): no line
        time.sleep(killed_after_s)
        os.kill(os.getpid(), 9)
    if fails_after_s is not None:  # the core itself fails, and exits: vLLM notices this on its own
        time.sleep(fails_after_s)
        print(f"(EngineCore pid={os.getpid()}) ValueError: the stand-in cannot load /m", file=sys.stderr, flush=True)
        sys.exit(1)
    for rank in range(2):
        _titled(f"VLLM::Worker_TP{rank}", f"from vllm import worker; worker({rank}, {dies_after_s!r})")
    _until_orphaned()  # vLLM 0.26's core waited on its dead workers for ever


class LLM:
    def __init__(self, scenario="ok", **engine_args):
        dies = None if scenario == "ok" else 1.0
        fails = 1.5 if scenario == "core fails" else None
        killed = 1.5 if scenario == "core killed" else None
        core = _titled("VLLM::EngineCore",
                       f"from vllm import engine_core; engine_core({dies!r}, {fails!r}, {killed!r})")
        if scenario == "ok":
            # a helper that is no engine process comes and goes (vLLM inspects the model in one)
            subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)"], check=True)
            time.sleep(2.0)
            return
        while scenario == "stuck" or core.poll() is None:  # "stuck": a start that never looks
            time.sleep(0.1)
        raise RuntimeError("Engine core initialization failed. See root cause above. "
                           f"Failed core proc(s): {{'EngineCore_0': {core.returncode}}}")
'''

LOAD = '''
import json, subprocess, sys, time
import psutil
import cluster.engines.engine_vllm as ev
from cluster.engines.engine import VllmSettings

ev.ENGINE_POLL_S, ev.ENGINE_GRACE_S = 0.5, 1.0
scenario, out = sys.argv[1], sys.argv[2]
if scenario == "ok":  # a closed engine's core, still exiting while the next one starts
    closing = psutil.Process(subprocess.Popen(["VLLM::EngineCore", "-c", "import time; time.sleep(2.0)"],
                                              executable=sys.executable).pid)
    # Popen returns once the child has begun its exec, before the kernel set its new argv: until then
    # it has no title. A closed engine's core was titled long before; so is this one before the start.
    while closing.cmdline()[:1] != ["VLLM::EngineCore"]:
        time.sleep(0.01)
started = time.monotonic()
try:
    ev.VllmModel("m", "/m", settings=VllmSettings(engine_kwargs={"scenario": scenario}), signature=None, dtype="auto")
    result = {"error": None}
except Exception as exc:
    result = {"error": type(exc).__name__, "message": str(exc)}
result["seconds"] = time.monotonic() - started
left = []
for proc in psutil.Process().children(recursive=True):
    try:
        left += [arg for arg in proc.cmdline()[:1] if arg.startswith("VLLM::")]
    except psutil.Error:  # ended (a zombie until reaped)
        pass
result["engine_left"] = sorted(left)
json.dump(result, open(out, "w"))
'''


def _load_with_standin(tmp_path, scenario: str) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text(STANDIN)
    repo = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo)]), STANDIN_PYTHON=sys.executable)
    with open(tmp_path / "worker.log", "wb") as log_file:  # as Ray gives a worker's output a file
        subprocess.run([sys.executable, "-c", LOAD, scenario, str(tmp_path / "result.json")], env=env,
                       stdout=log_file, stderr=subprocess.STDOUT, timeout=60, check=True)
    return json.loads((tmp_path / "result.json").read_text())


def test_workers_that_die_while_the_engine_starts_fail_the_load_in_seconds_with_their_error(tmp_path):
    result = _load_with_standin(tmp_path, "dies")
    assert result["error"] == "EngineDied" and result["seconds"] < 20  # the stand-in would wait for ever
    assert result["message"] == ("model m: vLLM unknown engine died while starting: Worker_TP0, Worker_TP1 exited; "
                                 "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert result["engine_left"] == []  # the core that waited on them was ended


def test_a_start_that_never_notices_its_dead_engine_is_interrupted(tmp_path):
    result = _load_with_standin(tmp_path, "stuck")
    assert result["error"] == "EngineDied" and result["seconds"] < 20
    assert "Worker_TP0, Worker_TP1 exited; RuntimeError: CUDA error" in result["message"]
    assert result["engine_left"] == []


def test_an_engine_core_that_fails_on_its_own_is_a_load_error_with_its_own_line(tmp_path):
    """vLLM notices a dead engine core itself ("see root cause above"); the root cause is the core's line.
    It is an error the host retries once (not a LoadError, final at once): on the H200 a checkpoint
    whose config disagrees with its weights failed this way."""
    result = _load_with_standin(tmp_path, "core fails")
    assert result["error"] == "EngineLoadFailed" and result["seconds"] < 20
    assert result["message"] == "model m: vLLM unknown cannot load /m: ValueError: the stand-in cannot load /m"


def test_an_engine_core_killed_from_outside_is_an_engine_that_died_not_a_model_that_cannot_load(tmp_path):
    """SIGKILLed while it starts (the kernel's OOM killer, a reclaimed node; issue 26's
    round_kill.py --engine-only): no line of its own, so not worded as a checkpoint vLLM cannot
    load. Retried once all the same."""
    result = _load_with_standin(tmp_path, "core killed")
    assert result["error"] == "EngineDied" and result["seconds"] < 20
    assert result["message"] == (
        "model m: vLLM unknown engine died while starting: its process ended with no error of its own (killed?); "
        "vLLM: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_0': -9}")


def test_a_healthy_start_is_left_alone(tmp_path):
    """A helper process that ends, and a closed engine's process exiting, are no dead engine."""
    result = _load_with_standin(tmp_path, "ok")
    assert result["error"] is None
    assert result["engine_left"] == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"]


def test_the_last_error_line_is_the_exception_without_vllms_prefixes(tmp_path):
    from cluster.engines.engine_vllm import _last_error_line

    log = tmp_path / "out.log"
    log.write_text("old: ValueError: before the watch\n")
    since = log.stat().st_size
    with open(log, "a") as f:
        f.write("(EngineCore pid=7) INFO 11-30 12:00:00 [core.py:1] starting\n"
                "(Worker_TP1 pid=9) torch.AcceleratorError: CUDA error: an illegal memory access was encountered\n"
                "(Worker_TP1 pid=9) CUDA kernel errors might be asynchronously reported\n")
    assert _last_error_line([(str(log), since)]) == \
        "torch.AcceleratorError: CUDA error: an illegal memory access was encountered"
    log.write_text("(EngineCore pid=7) ERROR 11-30 12:00:00 [core.py:1] Worker proc Worker_TP1 died unexpectedly\n")
    assert _last_error_line([(str(log), 0)]) == "Worker proc Worker_TP1 died unexpectedly"
    assert _last_error_line([(str(tmp_path / "missing.log"), 0)]) == ""
