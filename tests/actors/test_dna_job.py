"""`yard dna` end to end on local Ray and the toy zoo: plan, gates, retries, report, exit codes."""
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from actors.config import DnaConfig
from actors.dna_job import DEMO_CONFIG, run_dna
from cluster.config import load_config
from cluster.store.storage import open_store

pytestmark = pytest.mark.slow
FAST = ["probes.count=8", "generation.max_new_tokens=60", "generation.batch_size=8", "hosts.max_hosts=2"]


def cfg_for(zoo, store_dir, models, *extra):
    return load_config(
        DEMO_CONFIG, DnaConfig,
        ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={store_dir}", f"models={models}", *FAST, *extra],
    )


def test_dry_run_prints_the_plan_and_runs_nothing(ray_local, zoo, tmp_path, capsys):
    models = sorted(zoo.models)[:3]
    code, summary = run_dna(cfg_for(zoo, tmp_path, models), dry_run=True)
    out = capsys.readouterr().out
    assert code == 0 and "host-0" in out and "host-1" in out
    assert all(m in out for m in models)
    assert not (tmp_path / "dna").exists() and not (tmp_path / "jobs").exists()


def make_crash_then_hang_host(crashed: Path, stopped: Path, raised: Path):
    """A ModelHost whose process dies (os._exit, like a preempted node) on llama-a, once; stops
    for good (SIGSTOP, never resumed: a hung load or a wedged driver) while generating qwen3-b,
    once; and raises outside its per-model handling after exaone4-c (a store write that failed),
    once."""
    from actors.host import ModelHost

    class _CrashThenHang(ModelHost):
        def run_model(self, model_id, *args):
            if model_id == "llama-a" and not crashed.exists():
                crashed.write_text(model_id)
                os._exit(1)
            out = super().run_model(model_id, *args)
            if model_id == "exaone4-c" and not raised.exists():
                raised.write_text(model_id)
                raise OSError("store write failed: disk full")
            return out

        def _phase(self, name, model_id, *args, **kwargs):
            super()._phase(name, model_id, *args, **kwargs)
            if name == "generating" and model_id == "qwen3-b" and not stopped.exists():
                stopped.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGSTOP)

    return _CrashThenHang


def test_a_crashed_or_hung_host_is_replaced_and_its_model_retried(ray_local, zoo, tmp_path):
    from cluster.ops.status import collect

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    crashed, stopped, raised = tmp_path / "crashed", tmp_path / "stopped", tmp_path / "raised"
    started = time.time()
    code, summary = run_dna(
        cfg_for(zoo, tmp_path / "store", ["llama-a", "qwen3-b", "exaone4-c"], "hosts.max_hosts=1",
                "hosts.stall_after_s=6"),  # a few seconds: generation heartbeats per batch
        accept_suspicious=True, host_cls=make_crash_then_hang_host(crashed, stopped, raised),
    )
    assert crashed.exists() and stopped.exists() and raised.exists()  # each happened once
    assert code == 0 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok", "exaone4-c": "ok"}
    assert time.time() - started < 240  # the hang was acted on, not waited out
    ((incident,),) = [summary["incidents"]]
    assert incident["model_id"] == "qwen3-b" and incident["phase"] == "generating"
    assert incident["heartbeat_age_s"] >= 6  # rounded to 0.1 s
    store = open_store(str(tmp_path / "store"))
    (job,) = collect(store)
    tasks = {t.task: t for t in job.tasks}
    assert set(tasks) == {"host-0", "host-0.2", "host-0.3", "host-0.4"}  # a fresh host after each
    assert tasks[incident["host"]].status == "FAILED" and "stalled" in tasks[incident["host"]].message
    messages = sorted(t.message for t in tasks.values() if t.status == "FAILED" and "stalled" not in t.message)
    assert messages[0].startswith("host died while on llama-a")
    assert messages[1].startswith("host replaced after an error outside the model's step on exaone4-c: OSError: "
                                  "store write failed")
    assert tasks["host-0.4"].status == "SUCCEEDED" and job.status == "SUCCEEDED"
    report = Path(summary["report"]).read_text()
    assert "## Hosts the job killed" in report and f"| {incident['host']} | qwen3-b | generating |" in report
    from cluster.capacity.cost import read_jobs

    (ledger,) = read_jobs(store, ["dna"])
    died = next(e for e in ledger.entries if e.unit == "llama-a" and e.outcome == "retried")
    hung = next(e for e in ledger.entries if e.unit == "qwen3-b" and e.outcome == "stalled")
    # each row books the phase its host's last progress record named (and the host's start, when it
    # was that host's first model): llama-a's host died before loading it, qwen3-b's hung generating
    assert not {"load", "generate"} & set(died.phases), died.phases
    assert hung.phases["generate"] >= 5.9 and set(hung.phases) <= {"start", "generate"}, hung.phases


def make_leaky_host():
    """A ModelHost that reports its first model's GPU memory as not returned: what a vLLM engine
    that cannot be released does on a GPU (this machine has none, so the report is faked)."""
    from actors.host import ModelHost

    class _Leaky(ModelHost):
        def _unload(self, model_id, out, *args):
            super()._unload(model_id, out, *args)
            if not self.models:  # the first model of this host
                out["memory"]["returned"] = False

    return _Leaky


def test_a_host_that_keeps_gpu_memory_is_replaced_before_the_next_model(ray_local, zoo, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    code, summary = run_dna(cfg_for(zoo, tmp_path / "store", ["llama-a", "qwen3-b"], "hosts.max_hosts=1"),
                            accept_suspicious=True, host_cls=make_leaky_host())
    assert code == 0 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok"}  # the DNA itself is good
    store = open_store(str(tmp_path / "store"))
    done = {}
    for key in store.list_state("progress/"):
        rec = store.get_state(key)
        done[rec["task"]] = rec.get("status")
    assert set(done) == {"host-0", "host-0.2"}  # each model on its own host
    assert all(status == "succeeded" for status in done.values())


def test_deterministic_error_twice_is_skipped_others_kept_and_one_model_alone_has_no_tree(ray_local, zoo, tmp_path):
    import shutil

    import yaml

    # a checkpoint transformers cannot load (weights do not match the config): deterministic
    broken = tmp_path / "broken-model"
    shutil.copytree(Path(zoo.zoo_dir) / "llama-a", broken)
    cfgjson = broken / "config.json"
    cfgjson.write_text(cfgjson.read_text().replace('"hidden_size": 96', '"hidden_size": 80'))
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(
        {"kind": "models", "models": {"broken": {"source": str(broken), "params_b": 0.001, "family": "llama"}}}
    ))
    cfg = cfg_for(zoo, tmp_path / "store", ["broken", "qwen3-b"], "hosts.max_hosts=1")
    cfg = cfg.model_copy(update={"registry": [str(zoo.registry_path), str(tmp_path / "extra.yaml")]})
    code, summary = run_dna(cfg, accept_suspicious=True)
    assert code == 1
    assert summary["outcomes"] == {"broken": "skipped", "qwen3-b": "ok"}
    store = open_store(str(tmp_path / "store"))
    assert store.latest("dna", "qwen3-b", prefer=(".npy",)) is not None  # finished work kept
    assert store.latest("dna", "broken") is None
    assert len(store.runs("dna", "broken")) == 2  # tried twice, then skipped
    report = Path(summary["report"]).read_text()
    assert "skipped after the same error twice" in report

    # a rerun of the finished round: qwen3-b's fingerprint is reused and broken is not retried, so no
    # host starts at all (no progress record, no ledger row, nothing planned) and nothing is written
    # under dna/; the report still covers both (actors/dna_reuse.py)
    from cluster.capacity.cost import read_jobs

    (first,) = [r.prefix for r in store.runs("dna", "qwen3-b")]
    code, again = run_dna(cfg, accept_suspicious=True)
    assert code == 1 and again["outcomes"] == {"broken": "skipped", "qwen3-b": "reused"}
    assert again["reused"] == {"qwen3-b": first}
    assert len(store.runs("dna", "qwen3-b")) == 1 and len(store.runs("dna", "broken")) == 2
    rerun_job = read_jobs(store, ["dna"])[-1]
    assert rerun_job.entries == [] and rerun_job.plan["units"] == []
    assert not [k for k in store.list_state("progress/") if rerun_job.job_id in k]
    report = Path(again["report"]).read_text()
    assert f"qwen3-b ({first})" in report and "not retried (--retry-skipped to try again)" in report
    (rows,) = [store.get_json(k) for k in store.list_keys("reports/dna/") if k.endswith("summary.json")
               and Path(again["report"]).parent.name in k]
    assert {o["model_id"]: o.get("reused_from") for o in rows["outcomes"]} == {"broken": None, "qwen3-b": first}

    # one model alone (seen on the H200: a one-model job, a tensor-parallel host, exited 3, "refused
    # to publish: suspicious pairs []", although nothing was refused: one fingerprint has no
    # distances): kept, and the job succeeds without a tree. Its fingerprint is the reused one, so
    # no host starts: the analysis and report of one fingerprint are what is tested
    code, alone = run_dna(cfg.model_copy(update={"models": ["qwen3-b"]}))
    assert code == 0 and alone["outcomes"] == {"qwen3-b": "reused"}
    assert not alone["published"] and alone["suspicious"] == []
    assert "a tree needs 2 or more" in alone["no_tree"]
    report = Path(alone["report"])
    assert "one fingerprint" in report.read_text() and "REFUSED" not in report.read_text()
    assert not (report.parent / "tree.nwk").exists()


def test_bad_probe_file_is_one_line_exit_2(zoo, tmp_path, capsys):
    from cluster.cli import main as yard

    bad = tmp_path / "probes.yaml"
    bad.write_text("kind: probes\nname: x\nprobes: []\n")
    code = yard(["dna", str(DEMO_CONFIG), "zoo=null", f"registry=[{zoo.registry_path}]", f"probes.file={bad}", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(bad) in err[0]


def test_same_model_twice_is_distance_zero_and_the_outlier_gate_refuses_to_publish(ray_local, zoo, tmp_path):
    import yaml

    twin = {"kind": "models", "models": {"llama-a-twin": {
        "source": str(Path(zoo.zoo_dir) / "llama-a"), "params_b": 0.001, "family": "llama", "lineage_family": "twin"}}}
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(twin))
    registry = [str(zoo.registry_path), str(tmp_path / "twin.yaml")]
    # one host for the three models: the gate is what is tested, and each host start pays its imports
    cfg = cfg_for(zoo, tmp_path / "a", ["llama-a", "llama-a-twin", "qwen3-b"], "hosts.max_hosts=1")
    cfg = cfg.model_copy(update={"registry": registry})
    code, summary = run_dna(cfg)
    assert code == 3 and not summary["published"]  # refused, and never "Completed"
    ((a, b, d),) = summary["suspicious"]
    assert {a, b} == {"llama-a", "llama-a-twin"} and d < 1e-6  # greedy: the same fingerprint twice
    report = Path(summary["report"])
    assert "REFUSED" in report.read_text() and not (report.parent / "tree.nwk").exists()
    # declared identical: no longer suspicious, the tree is published; a rerun over the same store,
    # so the three fingerprints are reused (the gate's settings are not part of the reuse key) and
    # the published tree and report cover them
    cfg = cfg.model_copy(update={"identical": [["llama-a", "llama-a-twin"]]})
    code, summary = run_dna(cfg)
    assert code == 0 and summary["published"] and summary["suspicious"] == []
    assert set(summary["reused"]) == {"llama-a", "llama-a-twin", "qwen3-b"}
    newick = (Path(summary["report"]).parent / "tree.nwk").read_text()
    assert all(m in newick for m in ("llama-a-twin", "qwen3-b"))


def test_a_fresh_host_per_model_is_a_new_process_each_time_and_each_ledger_row_carries_its_start(
        ray_local, zoo, tmp_path):
    """`hosts.fresh_per_model` (the seed's way, issue 26): every model on a new host process, ended
    after its model; each ledger row books its own host's whole start, and the plan priced it so."""
    from cluster.capacity.cost import read_jobs

    models = ["llama-a", "qwen3-b"]
    code, summary = run_dna(cfg_for(zoo, tmp_path / "store", models, "hosts.max_hosts=1",
                                    "hosts.fresh_per_model=true"), accept_suspicious=True)
    assert code == 0 and summary["outcomes"] == {m: "ok" for m in models}
    store = open_store(str(tmp_path / "store"))
    hosts = {r["task"]: r for r in (store.get_state(k) for k in store.list_state("progress/"))}
    assert set(hosts) == {"host-0", "host-0.2"} and all(r["status"] == "succeeded" for r in hosts.values())
    assert len({r["pid"] for r in hosts.values()}) == len(models)  # a new process per model
    (job,) = read_jobs(store, ["dna"])
    rows = {e.unit: e for e in job.entries}
    assert sorted(e.where for e in rows.values()) == ["host-0", "host-0.2"] and len(rows) == len(models)
    for e in rows.values():  # not shared out: its own host's imports, CPU setup and encoder, and its process start
        assert e.outcome == "kept" and e.phases["start"] >= hosts[e.where]["host_start"]["host_start_total_s"] > 0
    assert job.plan["host_starts"] == 2 and {u["where"] for u in job.plan["units"]} == {"host-0", "host-0.2"}
    report = Path(summary["report"]).read_text()
    assert "| host-0 | 1 |" in report and "| host-0.2 | 1 |" in report  # one model on each host
