"""`yard demo` end to end on a local Ray and the toy zoo (the chat job alone: test_chat.py).

The demo's six steps run in two tests of two modules, so that two test workers share them: this
one runs `yard demo chat run dna` and the commands README runs on a demo store;
test_demo_sweep_serve_persona.py runs `yard demo sweep serve persona`. `make demo` runs all six in
one process at their shipped size, as the fresh-clone check before an issue is resolved does.

What these tests check is the demo's wiring (each step's config, job, report and store, one after
another on one zoo), plus what only the demo's full size shows: DNA lineage over all nine zoo
models, and a persona fine-tune that teaches. Where size is not what is tested, a step runs
smaller here: the experiment on one model's two framings (`smaller_experiment`; the grid is tested
in tests/cluster/experiment/) and the sweep on two trials. Chat stays on every model: at 0.7 CPU-s a
model, three instead of nine saved little."""
import pytest

from cluster.demo import main
from cluster.store.storage_local import LocalStore


def test_an_unknown_step_is_one_line_exit_2_before_the_zoo(tmp_path, capsys, no_ray, monkeypatch):
    import cluster.models.zoo

    monkeypatch.setattr(cluster.models.zoo, "build_zoo", no_ray)
    assert main(["--store", str(tmp_path / "store"), "chat", "dnaa"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["yard demo: unknown step 'dnaa' (steps: chat, run, dna, sweep, serve, persona)"]


EXPERIMENT_GRID = {"model": ["llama-a"], "framing": ["plain", "goal"]}


def smaller_experiment(monkeypatch):
    """The experiment step of `yard demo` at a test's size (the module docstring says why): its
    config as shipped, then EXPERIMENT_GRID's two conditions instead of six (6 CPU-s each)."""
    import cluster.experiment.job

    run_experiment_job = cluster.experiment.job.run_experiment_job
    monkeypatch.setattr(cluster.experiment.job, "run_experiment_job",
                        lambda cfg, *a, **k: run_experiment_job(cfg.model_copy(update={"grid": EXPERIMENT_GRID}), *a, **k))


@pytest.mark.slow
def test_yard_demo_runs_and_prints_reports(ray_local, zoo, tmp_path, capsys, monkeypatch):
    smaller_experiment(monkeypatch)
    store, out, _ = run_demo_steps(["chat", "run", "dna"], zoo, tmp_path, capsys, monkeypatch)
    assert "chat       ok" in out and f"report: {store}/reports/chat/" in out
    assert "run        ok" in out and f"report: {store}/experiments/bankroll-demo/results/" in out
    assert "dna        ok" in out and "sweep" not in out.split("yard demo summary")[1]  # only the steps asked for
    _check_chat_step(LocalStore(str(store)), sorted(zoo.models))
    _check_experiment_step(LocalStore(str(store)), str(tmp_path / "zoo" / "models.yaml"))
    _check_dna_step(LocalStore(str(store)), sorted(zoo.models))
    _run_documented_commands(store, tmp_path / "cwd", monkeypatch, capsys)


def run_demo_steps(steps, zoo, tmp_path, capsys, monkeypatch):
    """`yard demo STEP...` on a copy of the session's zoo (the sweep and persona steps register
    models in the zoo they ran on): (store, stdout, registered models). Checks what every step
    shares: exit 0, the zoo reused, a quiet console, and every job and task ended."""
    import shutil

    import yaml

    from cluster.ops.status import collect

    zoo_dir = tmp_path / "zoo"
    shutil.copytree(zoo.zoo_dir, zoo_dir)
    store = tmp_path / "store"
    _route_ray_output_as_connect_does(monkeypatch)
    code = main(["--store", str(store), "--zoo-dir", str(zoo_dir), *steps])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    # the first screen is the product's: Tune's config box and its temporary TensorBoard path, Serve's
    # INFO lines and the raylet's retry notice at Serve's shutdown go to the job logs (issue 27)
    for noise in ("Configuration for experiment", "View detailed results here", "Started Serve",
                  "graceful_shutdown"):
        assert noise not in out + captured.err, noise
    assert "(cache hit)" in out  # the session's zoo is reused, not rebuilt
    # every job ended, and so did every task's record (a trial ASHA stopped included): nothing
    # in `yard status` runs on or looks stalled after the demo
    statuses = collect(LocalStore(str(store)))
    assert statuses and {j.status for j in statuses} == {"SUCCEEDED"}
    assert not [(j.job_name, t.task, t.status) for j in statuses for t in j.tasks if t.status in ("RUNNING", "STALLED")]
    return store, out, yaml.safe_load((zoo_dir / "models.yaml").read_text())["models"]


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
    assert "bankroll-demo" in out and "dna" in out  # the status table and the cost report cover the jobs
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
    """The experiment step (`yard run` of configs/experiment.demo.yaml, an unchanged script, on
    EXPERIMENT_GRID: one model x 2 framings): a row per condition with the script's own JSON result,
    a ledger row per condition, and a second run on the same store that reuses both instead of
    running them."""
    import json

    from cluster.experiment.job import demo

    (results,) = [k for k in store.list_keys("experiments/bankroll-demo/results/") if k.endswith("results.jsonl")]
    rows = [json.loads(line) for line in store.get_bytes(results).decode().splitlines()]
    conditions = len(EXPERIMENT_GRID["model"]) * len(EXPERIMENT_GRID["framing"])
    assert len(rows) == conditions and {r["status"] for r in rows} == {"ok"}
    assert {(r["model"], r["framing"]) for r in rows} == {("llama-a", f) for f in EXPERIMENT_GRID["framing"]}
    assert all(isinstance(r["bankrupt"], bool) and 1 <= r["rounds_played"] <= 8 for r in rows), rows
    ledger = [json.loads(line) for key in store.list_keys("jobs/bankroll-demo/") if key.endswith("/ledger.jsonl")
              for line in store.get_bytes(key).decode().splitlines()]
    assert len(ledger) == conditions and {r["outcome"] for r in ledger} == {"kept"}
    assert all(r["phases"]["load"] > 0 for r in ledger)
    again = demo(store, registry)
    assert again["status"] == "ok" and again["reused"] == conditions and again["conditions"] == conditions


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
