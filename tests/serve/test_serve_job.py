"""serve/serve_job.py: `yard serve` bad input fails before anything starts, and a full start and stop
(`--duration-s`) is a job with a ledger; the app itself is tested in test_app.py."""
import pytest

from cluster.config import ConfigError, UserError
from serve.serve_job import leaderboard_candidates, main
from serve.config import ServeConfig


def test_missing_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        main([str(tmp_path / "nope.yaml"), "--duration-s", "1"])


def test_bad_duration_is_refused():
    with pytest.raises(ConfigError, match="--duration-s: 0.0 must be > 0"):
        main(["configs/serve.demo.yaml", "--duration-s", "0"])


def test_unknown_sweep_names_what_is_stored(tmp_path):
    cfg = ServeConfig(storage={"uri": str(tmp_path / "store")}, candidates=[{"id": "a", "path": str(tmp_path)}])
    with pytest.raises(UserError, match="sweep 'nope': not found .*no sweeps stored yet"):
        leaderboard_candidates(cfg, "nope", 3)


def test_from_leaderboard_serves_a_sweeps_best_candidates(zoo, tmp_path):
    """`--from-leaderboard`: the best ranked trials of a stored sweep become candidates whose
    model comes from the store; the engine loads one and answers."""
    from cluster.store.storage_local import LocalStore
    from serve.engine_hf import GenRequest, HFEngine

    store = LocalStore(tmp_path / "store")
    rows = []
    for trial, model_id, score in (("t1", "llama-a", 0.41), ("t2", "qwen3-b", 0.57), ("t3", "exaone4-c", None)):
        run = store.new_run("candidate", f"demo.{trial}")
        run.put_dir("model", zoo.zoo_dir / model_id)
        run.complete()
        rows.append({"trial_id": trial, "status": "ok" if score else "stopped", "score": score, "size_mb": 3.6,
                     "perf": 0.3, "sec_per_token": 0.001, "candidate": run.prefix if score else None})
    sweep = store.new_run("sweep", "demo")
    # what the sweep publishes (tune/sweep/sweep.py: publish ranks the rows with tune.sweep.leaderboard.rank_rows)
    ranked = [{**rows[1], "rank": 1}, {**rows[0], "rank": 2}, {**rows[2], "rank": None}]
    sweep.put_json("ranked.json", ranked)
    sweep.complete()
    cfg = ServeConfig(storage={"uri": store.uri}, candidates=[{"id": "a", "path": str(zoo.zoo_dir / "llama-a")}])
    best = leaderboard_candidates(cfg, "demo", 2)
    assert [c.id for c in best] == ["demo-rank1", "demo-rank2"]
    assert best[0].path.startswith("candidate/demo.t2/")  # Score 0.57 ranks first
    with pytest.raises(UserError, match=r"--top: 3 is not in 1..2"):
        leaderboard_candidates(cfg, "demo", 3)
    older = store.new_run("sweep", "old")  # published before ranked.json existed
    older.put_json("rows.json", rows)
    older.complete()
    with pytest.raises(UserError, match=r"--from-leaderboard: sweep/old/.*/ranked.json is missing"):
        leaderboard_candidates(cfg, "old", 1)
    engine = HFEngine(best[0], storage_uri=store.uri)
    prompt = engine.render_chat([{"role": "user", "content": "Tell me about a trip."}])
    (out,) = engine.generate([GenRequest(prompt, max_tokens=8, temperature=0.0)])
    assert out.completion_tokens > 0 and out.text.strip()


def test_overrides_are_key_value_arguments_as_in_every_job_and_set_is_an_alias(capsys):
    from cluster.cli import main as yard

    # a bad value stops before anything starts, naming the file and the field: the override reached the config
    for argv in (["serve", "configs/serve.demo.yaml", "port=notaport"],
                 ["serve", "configs/serve.demo.yaml", "--set", "port=notaport"]):
        assert yard(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "configs/serve.demo.yaml" in err[0] and "port" in err[0], err


def test_each_candidate_books_its_replicas_on_the_ledger():
    from types import SimpleNamespace

    from cluster.capacity.ledger import Ledger
    from serve.serve_job import record_replicas

    cfg = ServeConfig(candidates=[{"id": "big", "path": "/m/big", "num_gpus": 1, "num_replicas": 2,
                                   "accelerator_type": "H100", "num_cpus": 4},
                                  {"id": "small", "path": "/m/small"}])
    job = SimpleNamespace(ledger=Ledger("serve-1", "serve"))
    record_replicas(job, cfg, 40.0, 3600.0)
    big, small = job.ledger.entries
    assert (big.unit, big.node_type, big.accelerator, big.gpus, big.cpus, big.outcome) == (
        "big", "1xH100", "H100", 2.0, 8.0, "kept")
    assert big.phases == {"start": 40.0, "generate": 3600.0} and big.cold_seconds == 40.0
    assert (small.node_type, small.gpus, small.cpus) == ("cpu", 0.0, 1.0)
    failed = SimpleNamespace(ledger=Ledger("serve-2", "serve"))
    record_replicas(failed, cfg, 12.0, 0.0, started=False)   # the app never came up: its start is waste
    assert [(e.outcome, e.phases) for e in failed.ledger.entries] == [("failed", {"start": 12.0})] * 2


@pytest.mark.slow
def test_yard_serve_is_a_job_whose_replica_hours_yard_cost_prices(zoo, tmp_path, capsys):
    """`yard serve ... --duration-s` end to end: the app starts, serves, stops; the job's record
    and ledger are in the store, and `yard cost` prices both candidates' replicas."""
    import json

    from cluster.cli import main as yard
    from cluster.runtime import free_port
    from cluster.store.storage import open_store

    store_dir = tmp_path / "store"
    assert yard(["serve", "configs/serve.demo.yaml", "zoo=null", f"registry=[{zoo.registry_path}]",
                 f"storage.uri={store_dir}", f"port={free_port()}", "--duration-s", "2"]) == 0
    assert "serving at http://127.0.0.1:" in capsys.readouterr().out
    store = open_store(str(store_dir))
    (key,) = [k for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")]
    rows = [json.loads(line) for line in store.get_bytes(key).decode().splitlines()]
    assert sorted(r["unit"] for r in rows) == ["llama-a", "qwen3-b"]
    assert all(r["outcome"] == "kept" and r["phases"]["start"] > 0 and r["phases"]["generate"] >= 2.0 for r in rows)
    assert yard(["cost", "--store", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "**1 job, $" in out
    assert "| llama-a | 1 | kept |" in out and "| qwen3-b | 1 | kept |" in out  # per model: attempts, outcome
