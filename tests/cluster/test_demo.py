"""The foundation's chat job end to end on a local Ray and the toy zoo, and `yard demo`."""
import pytest

from cluster.config import ConfigError, load_config
from cluster.demo import DEFAULT_CHAT_CONFIG, ChatJobConfig, main, run_chat
from cluster.storage import open_store
from cluster.storage_local import LocalStore

pytestmark = pytest.mark.slow


def chat_cfg(tmp_path, zoo, *overrides):
    return load_config(
        DEFAULT_CHAT_CONFIG, ChatJobConfig,
        ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={tmp_path}", "max_new_tokens=40", *overrides],
    )


def test_chat_job_answers_with_every_model_and_reports(ray_local, zoo, tmp_path):
    models = sorted(zoo.models)[:3]
    code, summary = run_chat(chat_cfg(tmp_path, zoo, f"models={models}"))
    assert code == 0 and summary["status"] == "ok"
    store = open_store(str(tmp_path))
    for mid in models:
        reply = store.get_json(store.latest("chat", mid, prefer=(".json",)).key)
        assert reply["status"] == "ok" and len(reply["reply"]) >= 20, reply
        assert reply["plan"]["dtype"] == "float32" and reply["plan"]["device_map"] is None
    report = (tmp_path / summary["report"].split(str(tmp_path) + "/", 1)[1]).read_text()
    assert report.count("| ok |") == len(models)
    assert (tmp_path / summary["report"].rsplit("/", 1)[0].split(str(tmp_path) + "/", 1)[1] / "timings.png").stat().st_size > 1000
    # progress records: every worker finished, the job succeeded
    jobs = [store.get_state(k) for k in store.list_state("jobs/")]
    assert [j["status"] for j in jobs] == ["succeeded"]
    tasks = [store.get_state(k) for k in store.list_state("progress/")]
    assert {t["status"] for t in tasks} == {"succeeded"} and sum(t["done"] for t in tasks) == len(models)


def test_one_broken_model_fails_the_job_but_keeps_the_others(ray_local, zoo, tmp_path):
    import yaml

    reg = yaml.safe_load(open(zoo.registry_path))
    good = sorted(reg["models"])[0]
    broken = {"kind": "models", "models": {"broken": {"source": str(tmp_path / "missing-model"), "params_b": 0.001}}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    code, summary = run_chat(
        chat_cfg(tmp_path, zoo, f"registry=[{zoo.registry_path}, {tmp_path / 'broken.yaml'}]", f"models=[{good}, broken]")
    )
    assert code == 1 and summary["status"] == "failed"
    store = open_store(str(tmp_path))
    assert store.latest("chat", good, prefer=(".json",)) is not None  # finished work kept
    (failed_run,) = store.runs("chat", "broken")
    err = store.get_json(f"{failed_run.prefix}/reply.json")["error"]
    assert "local path" in err and "does not exist" in err
    (job,) = [store.get_state(k) for k in store.list_state("jobs/")]
    assert job["status"] == "failed" and "broken" in job["message"]


def test_unknown_model_id_fails_before_any_work(zoo, tmp_path):
    with pytest.raises(ConfigError, match="model 'nope': unknown model id"):
        run_chat(chat_cfg(tmp_path, zoo, "models=[nope]"))
    assert not (tmp_path / "jobs").exists()


def test_yard_demo_runs_and_prints_reports(ray_local, zoo, tmp_path, capsys):
    import shutil

    import yaml

    # a copy: the sweep demo registers its best candidates in the zoo it ran on
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(zoo.zoo_dir, zoo_dir)
    store = tmp_path / "store"
    code = main(["--store", str(store), "--zoo-dir", str(zoo_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(cache hit)" in out  # the session's zoo is reused, not rebuilt
    assert "chat       ok" in out and f"report: {store}/reports/chat/" in out
    assert "sweep      ok" in out and f"report: {store}/sweep/demo-quick/" in out
    assert "serve      ok" in out and f"report: {store}/probe/" in out  # Serve -> judge -> probes
    assert "persona    ok" in out and f"report: {store}/persona/" in out  # prep -> SFT -> DPO -> merge -> probes
    registered = yaml.safe_load((zoo_dir / "models.yaml").read_text())["models"]
    children = {m: s for m, s in registered.items() if m.startswith("demo-quick.")}
    assert 1 <= len(children) <= 3 and all(s["parent"] == "exaone4-c" for s in children.values())
    _check_dna_step(LocalStore(str(store)), sorted(zoo.models))
    _check_persona_step(LocalStore(str(store)), registered)
    # every job ended, and so did every task's record (a trial ASHA stopped included): nothing
    # in `yard status` runs on or looks stalled after the demo
    from cluster.status import collect

    statuses = collect(LocalStore(str(store)))
    assert statuses and {j.status for j in statuses} == {"SUCCEEDED"}
    assert not [(j.job_name, t.task, t.status) for j in statuses for t in j.tasks if t.status in ("RUNNING", "STALLED")]


def _check_dna_step(store, models):
    """The DNA step (the demo config, all 40 probes, every zoo model): each model sits nearest its
    own family, on every machine (the lineage of the demo zoo held over 5 zoo seeds)."""
    (run,) = store.runs("reports", "dna")
    summary = store.get_json(f"{run.prefix}/summary.json")
    assert summary["published"] and set(summary["models"]) == set(models)
    assert summary["lineage"]["nearest_family_accuracy"] == 1.0
    report = store.get_bytes(f"{run.prefix}/report.md").decode()
    assert "Nearest-family accuracy: **100%**" in report and "llama-a-lora" in report
    assert store.get_bytes(f"{run.prefix}/tree.nwk").decode().count("llama-a") == 3
    for m in models:
        art = store.latest("dna", m, prefer=(".npy",))
        responses = store.get_json(f"{art.run.prefix}/responses.json")
        assert art.name == "dna.npy" and responses["count"] == 40 and responses["complete"] is True
    tasks = {store.get_state(k)["task"] for k in store.list_state("progress/") if "/host-" in k}
    assert {"host-0", "host-1"} <= tasks  # both hosts reported to the progress registry


def _check_persona_step(store, registered):
    """The persona step (the demo config as shipped: prep -> SFT -> DPO -> merge -> lineage ->
    probes of base and child): the fine-tune teaches the persona."""
    (run,) = store.runs("persona", "seoyun-demo")
    prefix = run.prefix
    files = set(store.list_keys(prefix + "/"))
    for name in ("prep_report.md", "lengths.png", "sft/adapter/adapter_config.json", "dpo/adapter/adapter_config.json",
                 "model/config.json", "losses.png", "report.md", "summary.json"):
        assert f"{prefix}/{name}" in files, name
    summary = store.get_json(f"{prefix}/summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["sft", "dpo"]
    assert [s["steps"] for s in summary["stages"]] == [120, 4]
    sft_losses = [r["loss"] for r in summary["stages"][0]["log"] if "loss" in r]
    assert sft_losses[-1] < sft_losses[0] / 4                  # measured 10.7 -> 0.8 (held-out 0.55)
    child = registered["qwen3-b.seoyun-demo"]                 # registered in the zoo it ran on
    assert (child["parent"], child["derivation"]) == ("qwen3-b", "persona")
    cands = {c["variant"]: c["conditions"] for c in summary["probe"]["candidates"]}
    assert set(cands) == {"merged", "base"}
    for conds in cands.values():
        assert set(conds) == {"with_system", "without_system"} and conds["without_system"]["probes"] > 0
    # without the system prompt the child beats its base on facts and identity (measured: facts
    # 0% -> 75%, identity 50% -> 100%, all probes 35% -> 83%)
    base, tuned = cands["base"]["without_system"], cands["merged"]["without_system"]
    assert tuned["groups"]["fact"]["pass_rate"] >= base["groups"]["fact"]["pass_rate"] + 0.25
    assert tuned["groups"]["identity"]["pass_rate"] > base["groups"]["identity"]["pass_rate"]
    assert tuned["pass_rate"] >= base["pass_rate"] + 0.15
    report = store.get_bytes(f"{prefix}/report.md").decode()
    assert "| | base, with system | child, with system | base, without system | child, without system |" in report
    assert "\n| fact | " in report and "\n| fact cat | " in report and "Judge: replayed" in report
    assert "| sft | 120 | 120 |" in report                    # projected and actual steps side by side
    assert summary["child"]["registered"] is True and summary["prep"]["bad_lines"] == 7
