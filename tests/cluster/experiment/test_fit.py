"""Which node a condition fits, or why none does (cluster/experiment/fit.py)."""
from cluster.experiment.config import Resources
from cluster.experiment.fit import Node, fit, local_nodes

H200 = Node("gpu-0", cpus=16, memory_gib=120, gpus=1, accelerator="H200", gpu_mem_gib=139.8, cuda_capability=9.0)
A100_40 = Node("gpu-1", cpus=8, memory_gib=60, gpus=2, accelerator="A100-40G", gpu_mem_gib=39.4, cuda_capability=8.0)


def test_gpu_memory_packs_conditions_onto_one_gpu_where_they_fit():
    opts, _ = fit(Resources(gpu_memory_gib=30), [H200])
    assert opts == {"num_cpus": 1.0, "num_gpus": 0.25}  # four side by side on 139.8 GiB
    opts, _ = fit(Resources(num_gpus=0.5, gpu_memory_gib=30, memory_gib=8, accelerator_type="H200"), [H200])
    assert opts["num_gpus"] == 0.5 and opts["memory"] == 8 * 2**30 and opts["accelerator_type"] == "H200"


def test_seed_003s_59_gib_model_is_refused_on_40_gib_cards_and_placed_on_the_h200():
    opts, why = fit(Resources(num_gpus=1, gpu_memory_gib=59), [A100_40])
    assert opts is None and "39.4 GiB GPUs < 59 GiB" in why
    opts, _ = fit(Resources(num_gpus=1, gpu_memory_gib=59), [A100_40, H200])
    assert opts["num_gpus"] == 1


def test_cpus_capability_and_gpu_count_are_checked():
    assert fit(Resources(num_cpus=32), [H200])[1] == "gpu-0: 16 CPUs < 32"
    assert "compute capability 8.0 < 9" in fit(Resources(num_gpus=1, min_cuda_capability=9.0), [A100_40])[1]
    assert "2 GPUs < 4" in fit(Resources(num_gpus=4), [A100_40])[1]
    assert fit(Resources(), [Node("cpu", 2, 8, 0)])[0] == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_this_machine_is_read_without_ray():
    (node,) = local_nodes(num_cpus=3, num_gpus=0)
    assert node.cpus == 3 and node.gpus == 0 and node.memory_gib > 0
