"""cluster/capacity/gpus.py: the node's GPU ids behind torch's visible indices, and what this process holds."""
import pytest

from cluster.capacity.gpus import gpu_facts, physical_gpu_ids


@pytest.mark.parametrize(
    "env, visible, expected",
    [
        ("3,5", [1], [5]),
        ("3,5", [0, 1], [3, 5]),
        (None, [0, 2], [0, 2]),
        ("", [1], [1]),
        ("GPU-8a1b,GPU-77ff", [1], ["GPU-77ff"]),
    ],
)
def test_physical_gpu_ids_follow_cuda_visible_devices(monkeypatch, env, visible, expected):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if env is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert physical_gpu_ids(visible) == expected


def test_physical_gpu_ids_rejects_an_index_past_the_list():
    with pytest.raises(ValueError, match="out of range"):
        physical_gpu_ids([2], "3,5")


def test_gpu_facts_without_cuda_reports_the_visible_ids(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        pytest.skip("CUDA present: ids come from torch")
    assert gpu_facts() == ([2, 5], [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_facts() == ([], [])


class _FakeCuda:
    """Stands in for torch.cuda (no GPU here): per-device reserved bytes, as a process sees them."""

    def __init__(self, reserved: list[int]):
        self.reserved = reserved

    def is_available(self):
        return True

    def device_count(self):
        return len(self.reserved)

    def memory_reserved(self, i):
        return self.reserved[i]

    def current_device(self):
        return 0


class _FakeRay:
    def __init__(self, ids):
        self.ids = ids

    def is_initialized(self):
        return True

    def get_gpu_ids(self):
        return self.ids


def test_a_ray_task_reports_every_gpu_it_was_given(monkeypatch):
    # A warm host running a tensor-parallel vLLM engine holds GPUs 0 and 1, but only its encoder
    # allocates in the host's own process (on GPU 0); the engine's workers are child processes.
    # Seen on 2 x H200: status showed [0] for such a host. Fakes stand in for torch.cuda and Ray.
    import sys
    import types

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=_FakeCuda([2**31, 0])))
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(["0", "1"]))
    assert gpu_facts() == ([0, 1], [2.0, 0.0])
    # outside Ray: only the devices this process holds memory on
    monkeypatch.setitem(sys.modules, "ray", _FakeRay([]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_facts() == ([3], [2.0])
