"""cluster/gpus.py: the node's GPU ids behind torch's visible indices, and what this process holds."""
import pytest

from cluster.gpus import gpu_facts, physical_gpu_ids


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
