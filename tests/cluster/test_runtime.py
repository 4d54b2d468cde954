"""cluster/runtime.py: the cluster summary of a multi-node GPU cluster (Ray's node listing stands
in for one: this machine has no GPU and one node) and free ports. `connect` itself starts the real
local Ray of every Ray test."""
import socket
from types import SimpleNamespace

import ray

from cluster import runtime


def test_cluster_summary_lists_live_nodes(monkeypatch):
    nodes = [
        {"Alive": True, "NodeID": "abcdef0123456789", "NodeManagerAddress": "10.0.0.1",
         "Resources": {"CPU": 16.0, "GPU": 2.0, "memory": 64 * 2**30, "accelerator_type:L4": 1.0,
                       "accelerator_type:A100": 1.0}},
        {"Alive": False, "NodeID": "dead000000000000", "Resources": {"CPU": 8.0}},
        {"Alive": True, "NodeID": "0011223344556677", "NodeManagerAddress": "10.0.0.2", "Resources": {}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(gcs_address="10.0.0.1:6379"))
    summary = runtime.cluster_summary()
    assert summary["gcs_address"] == "10.0.0.1:6379" and summary["resources"] == {"CPU": 16.0, "GPU": 2.0}
    first, second = summary["nodes"]
    assert first == {"node_id": "abcdef01", "address": "10.0.0.1", "cpus": 16.0, "gpus": 2.0,
                     "accelerator_types": ["A100", "L4"], "memory_gib": 64.0}
    assert (second["node_id"], second["cpus"], second["gpus"], second["accelerator_types"]) == ("00112233", 0, 0, [])


def test_free_port_can_be_bound():
    port = runtime.free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_dashboard_available_is_a_plain_answer():
    assert runtime.dashboard_available() in (True, False)
