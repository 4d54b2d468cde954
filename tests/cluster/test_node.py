"""cluster/node.py: the facts a load decision reads, and reading them on this node."""
import os
import socket

import torch  # here, not in the test: importing it takes seconds

from cluster.node import NodeFacts, node_facts


def test_gpu_count_and_max_capability_come_from_the_gpu_lists():
    cpu = NodeFacts(hostname="laptop", cuda=False)
    assert cpu.gpu_count == 0 and cpu.max_capability is None
    mixed = NodeFacts(hostname="g", cuda=True, gpu_names=("L4", "H100"), cuda_capabilities=(8.9, 9.0),
                      gpu_mem_gib=(22.0, 79.0))
    assert mixed.gpu_count == 2 and mixed.max_capability == 9.0


def test_to_dict_holds_every_field():
    facts = NodeFacts(hostname="h", cuda=False, cpu_count=4, extra={"python": "3.11"})
    d = facts.to_dict()
    assert d["hostname"] == "h" and d["cpu_count"] == 4 and d["extra"] == {"python": "3.11"}
    assert set(d) == {"hostname", "cuda", "gpu_names", "cuda_capabilities", "gpu_mem_gib", "cpu_mem_gib",
                      "cpu_count", "cuda_visible_devices", "torch_version", "extra"}


def test_node_facts_describe_this_machine(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    facts = node_facts()
    assert facts.hostname == socket.gethostname()
    assert facts.cuda == torch.cuda.is_available()
    assert facts.gpu_count == len(facts.cuda_capabilities) == len(facts.gpu_mem_gib)
    assert facts.cpu_count == (os.cpu_count() or 1) and facts.cpu_mem_gib >= 0
    assert facts.cuda_visible_devices == "" and facts.torch_version == torch.__version__
    assert {"platform", "python"} <= set(facts.extra)
