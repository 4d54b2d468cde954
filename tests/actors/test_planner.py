"""Packing models onto warm hosts; impossible models rejected at plan time."""
from actors.planner import node_kinds_from_ray, plan_hosts
from cluster.models.registry import ModelRegistry, ModelSpec


def reg(**specs):
    return ModelRegistry({mid: ModelSpec(source="org/m", **kw) for mid, kw in specs.items()})


def ray_node(cpus, gpus=0, accel=None, mem_gib=64):
    res = {"CPU": cpus, "memory": mem_gib * 2**30}
    if gpus:
        res["GPU"] = gpus
        res[f"accelerator_type:{accel}"] = 1
    return {"Alive": True, "Resources": res}


def test_cpu_cluster_small_models_share_warm_hosts():
    r = reg(a=dict(params_b=0.001), b=dict(params_b=0.001), c=dict(params_b=0.001))
    plan = plan_hosts(["a", "b", "c"], r, node_kinds_from_ray([ray_node(2)]), max_hosts=2)
    assert len(plan.hosts) == 2 and plan.rejected == {}
    assert sorted(m for h in plan.hosts for m in h.models) == ["a", "b", "c"]
    assert all(h.num_gpus == 0 and h.device_map == "cpu" for h in plan.hosts)


def test_cpu_cluster_rejects_quantized_and_capability_models_at_plan_time():
    r = reg(q=dict(params_b=7, load_in="4bit"), moe=dict(params_b=30, min_cuda_capability=9.0), ok=dict(params_b=0.1))
    plan = plan_hosts(["q", "moe", "ok"], r, node_kinds_from_ray([ray_node(2)]))
    assert plan.rejected["q"] == "model q: no node can run it (cpu: load_in 4bit needs a CUDA GPU)"
    assert "needs compute capability >= 9.0" in plan.rejected["moe"]
    assert [h.models for h in plan.hosts] == [["ok"]]


def test_gpu_cluster_big_model_gets_its_own_multi_gpu_host_and_small_ones_share():
    r = reg(big=dict(params_b=70.6, num_gpus=4), s1=dict(params_b=1.2), s2=dict(params_b=0.6), s3=dict(params_b=8))
    kinds = node_kinds_from_ray([ray_node(64, 8, "H100", 512)])
    plan = plan_hosts(["big", "s1", "s2", "s3"], r, kinds, max_hosts=8)
    (big,) = [h for h in plan.hosts if h.models == ["big"]]
    assert big.num_gpus == 4 and big.device_map == "device_map=auto"
    small_hosts = [h for h in plan.hosts if h is not big]
    assert sorted(m for h in small_hosts for m in h.models) == ["s1", "s2", "s3"]
    assert all(h.num_gpus == 1.0 for h in small_hosts)


def test_more_small_models_than_gpus_run_side_by_side_when_memory_allows():
    r = reg(**{f"m{i}": dict(params_b=0.5) for i in range(6)})
    plan = plan_hosts([f"m{i}" for i in range(6)], r, node_kinds_from_ray([ray_node(16, 1, "H100")]), max_hosts=4)
    assert len(plan.hosts) == 4
    assert all(h.num_gpus == 0.25 for h in plan.hosts)


def test_capability_and_memory_rejections_name_the_reason():
    r = reg(moe=dict(params_b=30.5, num_gpus=2, min_cuda_capability=9.0), huge=dict(params_b=400), unknown_ok=dict(params_b=1))
    kinds = node_kinds_from_ray([ray_node(48, 4, "L40S", 384)])
    plan = plan_hosts(["moe", "huge", "unknown_ok", "nope"], r, kinds)
    assert "needs compute capability >= 9.0, 4xL40S has 8.9" in plan.rejected["moe"]
    assert "needs ~931.3 GiB" in plan.rejected["huge"]
    assert plan.rejected["nope"] == "model nope: unknown model id"
    assert [h.models for h in plan.hosts] == [["unknown_ok"]]


def test_nodes_of_one_type_are_one_kind_and_kinds_never_share_a_name():
    """Two nodes started seconds apart reported 10.01 and 10.02 GiB: one kind of 2 nodes (its
    smallest memory), not two kinds both named cpu of which the plan kept one."""
    kinds = node_kinds_from_ray([ray_node(1, mem_gib=10.01), ray_node(1, mem_gib=10.02)])
    assert [(k.name, k.count, k.cpu_mem_gib) for k in kinds] == [("cpu", 2, 10.0)]
    mixed = node_kinds_from_ray([ray_node(2), ray_node(8), ray_node(8)])
    assert sorted((k.name, k.count) for k in mixed) == [("cpu-2cpu", 1), ("cpu-8cpu", 2)]


def test_vllm_keeps_same_shape_models_together_so_the_engine_swaps_weights():
    # the issue-26 round's mix on 2 GPUs: LPT by model would split each shape over both hosts
    # (each host starting an engine per shape); by runs of one shape, every shape starts once
    shapes = {"llama": ("llama", 8.03, 1), "q4": ("qwen3", 4.02, 2), "moe": ("olmoe", 6.92, 1),
              "q17": ("qwen3", 2.03, 3), "ex": ("exaone4", 1.28, 5)}
    specs = {f"{name}-{i}": dict(family=fam, params_b=p) for name, (fam, p, n) in shapes.items() for i in range(n)}
    ids = list(specs)
    kinds = node_kinds_from_ray([ray_node(16, 2, "H200", 128)])
    plan = plan_hosts(ids, reg(**specs), kinds, max_hosts=2, engine="vllm")
    assert sorted(m for h in plan.hosts for m in h.models) == sorted(ids) and len(plan.hosts) == 2
    for name in shapes:  # each shape on one host, its models one after another
        (host,) = [h for h in plan.hosts if any(m.startswith(f"{name}-") for m in h.models)]
        at = [i for i, m in enumerate(host.models) if m.startswith(f"{name}-")]
        assert at == list(range(at[0], at[0] + len(at)))
    # the HF path (no swap) still spreads model by model
    hf = plan_hosts(ids, reg(**specs), kinds, max_hosts=2, engine="hf")
    assert sum(any(m.startswith("ex-") for m in h.models) for h in hf.hosts) == 2


def test_vllm_splits_one_family_bigger_than_a_fair_share_over_the_hosts():
    specs = {f"ft-{i}": dict(family="llama", params_b=8.03) for i in range(6)} | {"small": dict(params_b=1.0)}
    kinds = node_kinds_from_ray([ray_node(16, 2, "H200", 128)])
    plan = plan_hosts(list(specs), reg(**specs), kinds, max_hosts=2, engine="vllm")
    per_host = [[m for m in h.models if m.startswith("ft-")] for h in plan.hosts]
    assert sorted(len(p) for p in per_host) == [3, 3]  # two runs of 3, one per host
    assert per_host[0] + per_host[1] == [f"ft-{i}" for i in range(3)] + [f"ft-{i}" for i in range(3, 6)] or \
        per_host[1] + per_host[0] == [f"ft-{i}" for i in range(6)]
