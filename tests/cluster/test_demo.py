"""`yard demo` end to end on a local Ray and the toy zoo (the chat job alone: test_chat.py)."""
import pytest

from cluster.demo import main
from cluster.storage_local import LocalStore

pytestmark = pytest.mark.slow


def test_yard_demo_runs_and_prints_reports(ray_local, zoo, tmp_path, capsys, monkeypatch):
    import shutil

    import yaml

    # a copy: the sweep demo registers its best candidates in the zoo it ran on
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(zoo.zoo_dir, zoo_dir)
    store = tmp_path / "store"
    _route_ray_output_as_connect_does(monkeypatch)
    code = main(["--store", str(store), "--zoo-dir", str(zoo_dir)])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    # the first screen is the product's: Tune's config box and its temporary TensorBoard path, Serve's
    # INFO lines and the raylet's retry notice at Serve's shutdown go to the job logs (issue 27)
    for noise in ("Configuration for experiment", "View detailed results here", "Started Serve",
                  "graceful_shutdown"):
        assert noise not in out + captured.err, noise
    assert "(cache hit)" in out  # the session's zoo is reused, not rebuilt
    assert "chat       ok" in out and f"report: {store}/reports/chat/" in out
    assert "run        ok" in out and f"report: {store}/experiments/bankroll-demo/results/" in out
    assert "sweep      ok" in out and f"report: {store}/sweep/demo-quick/" in out
    assert "serve      ok" in out and f"report: {store}/probe/" in out  # Serve -> judge -> probes
    assert "persona    ok" in out and f"report: {store}/persona/" in out  # prep -> SFT -> DPO -> merge -> probes
    registered = yaml.safe_load((zoo_dir / "models.yaml").read_text())["models"]
    children = {m: s for m, s in registered.items() if m.startswith("demo-quick.")}
    assert 1 <= len(children) <= 3 and all(s["parent"] == "exaone4-c" for s in children.values())
    _check_chat_step(LocalStore(str(store)), sorted(zoo.models))
    _check_experiment_step(LocalStore(str(store)), str(zoo_dir / "models.yaml"))
    _check_dna_step(LocalStore(str(store)), sorted(zoo.models))
    _check_persona_step(LocalStore(str(store)), registered)
    # every job ended, and so did every task's record (a trial ASHA stopped included): nothing
    # in `yard status` runs on or looks stalled after the demo
    from cluster.status import collect

    statuses = collect(LocalStore(str(store)))
    assert statuses and {j.status for j in statuses} == {"SUCCEEDED"}
    assert not [(j.job_name, t.task, t.status) for j in statuses for t in j.tasks if t.status in ("RUNNING", "STALLED")]
    _run_documented_commands(store, tmp_path / "cwd", monkeypatch, capsys)


def _route_ray_output_as_connect_does(monkeypatch):
    """`yard demo` starts its Ray in cluster.runtime.connect, which then routes Ray's output to the
    job logs; here Ray is the session's (ray_local), so connect leaves it alone: route it as connect
    would, and put Ray's printers back afterwards."""
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from cluster.joblog import route_ray_output

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)
    monkeypatch.setattr(dispatcher, "handlers", list(dispatcher.handlers))
    assert route_ray_output()


def _run_documented_commands(store, cwd, monkeypatch, capsys):
    """README's and docs/' commands that read a store (tests/cluster/test_docs.py DEMO_STORE), as
    written, against this demo's store."""
    import shlex

    from cluster.cli import main as yard
    from tests.cluster.test_docs import DEMO_STORE

    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("YARD_STORE", str(store))
    for cmd in DEMO_STORE:
        assert yard(shlex.split(cmd)[1:]) == 0, cmd
    out = capsys.readouterr().out
    assert "bankroll-demo" in out and "persona" in out  # the status table and the cost report cover the jobs
    assert (cwd / "status.md").stat().st_size > 1000 and (cwd / "cost" / "cost.png").stat().st_size > 1000


def _check_chat_step(store, models):
    """The chat step (the demo's chat config, every zoo model): each model answers, the report and
    its plot, a ledger row per model timed by its worker, and every progress record ended (this
    run is the chat job's end-to-end test; tests/cluster/test_chat.py covers its failures)."""
    import json

    (run,) = store.runs("reports", "chat")
    report = store.get_bytes(f"{run.prefix}/report.md").decode()
    assert report.count("| ok |") == len(models)
    assert [ln for ln in report.splitlines() if ln.strip()][-1].startswith("Cost: $")  # ends with its cost
    assert len(store.get_bytes(f"{run.prefix}/timings.png")) > 1000
    for mid in models:
        reply = store.get_json(store.latest("chat", mid, prefer=(".json",)).key)
        assert reply["status"] == "ok" and len(reply["reply"]) >= 20, reply
        assert reply["plan"]["dtype"] == "float32" and reply["plan"]["device_map"] is None
    rows = [json.loads(line) for key in store.list_keys("jobs/") if key.endswith("/ledger.jsonl")
            for line in store.get_bytes(key).decode().splitlines()]
    rows = [r for r in rows if r["kind"] == "chat"]
    assert sorted(r["unit"] for r in rows) == models and {r["outcome"] for r in rows} == {"kept"}
    assert all(r["node_type"] == "cpu" and r["cpus"] == 1.0 and r["phases"]["load"] > 0
               and r["phases"]["generate"] > 0 and r["phases"]["start"] > 0 for r in rows), rows
    (job,) = [store.get_state(k) for k in store.list_state("jobs/") if store.get_state(k)["job_name"] == "chat"]
    assert job["status"] == "succeeded"
    tasks = [store.get_state(k) for k in store.list_state(f"progress/{job['job_id']}/")]
    assert {t["status"] for t in tasks} == {"succeeded"} and sum(t["done"] for t in tasks) == len(models)


def _check_experiment_step(store, registry):
    """The experiment step (`yard run` of configs/experiment.demo.yaml: an unchanged script over 3
    models x 2 framings): a row per condition with the script's own JSON result, a ledger row per
    condition, and a second run on the same store that reuses all six instead of running them."""
    import json

    from cluster.experiment.job import demo

    (results,) = [k for k in store.list_keys("experiments/bankroll-demo/results/") if k.endswith("results.jsonl")]
    rows = [json.loads(line) for line in store.get_bytes(results).decode().splitlines()]
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert all(isinstance(r["bankrupt"], bool) and 1 <= r["rounds_played"] <= 8 for r in rows), rows
    ledger = [json.loads(line) for key in store.list_keys("jobs/bankroll-demo/") if key.endswith("/ledger.jsonl")
              for line in store.get_bytes(key).decode().splitlines()]
    assert len(ledger) == 6 and {r["outcome"] for r in ledger} == {"kept"} and all(r["phases"]["load"] > 0 for r in ledger)
    again = demo(store, registry)
    assert again["status"] == "ok" and again["reused"] == 6 and again["conditions"] == 6


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
