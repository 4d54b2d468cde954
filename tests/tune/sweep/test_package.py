import json
import zipfile

import pytest

from cluster.store.storage import StoreError
from cluster.store.storage_local import LocalStore
from cluster.store.storage_s3 import S3Store
from tune.sweep.package import PackageError, find_sweep_run, is_submission_file, main, package_top

OLD_RUN, NEW_RUN, OPEN_RUN = "20260101-000000-000001aaaaaa", "20260102-000000-000001bbbbbb", "20260103-000000-000001cccccc"
JUNK = {"training_args.bin": b"\x00" * 64, "optimizer.pt": b"\x01" * 64, "recipe.yaml": b"quant: w4a16\n",
        "checkpoint-1/model.safetensors": b"not a submission"}
# (trial, zoo model, score): exaone4-c scores best, llama-a second, qwen3-b third
TRIALS = [("t-llama", "llama-a", 0.55), ("t-qwen", "qwen3-b", 0.52), ("t-exaone", "exaone4-c", 0.61)]


def _put_candidate(store, zoo, model_id) -> str:
    run = store.new_run("candidate", model_id)
    run.put_dir("model", zoo.zoo_dir / model_id)
    for name, data in JUNK.items():
        run.put_bytes(f"model/{name}", data)
    run.put_json("trial.json", {"model_id": model_id})
    run.complete()
    return run.prefix


def _rows(candidates: dict[str, str]) -> list[dict]:
    rows = [{"trial_id": tid, "status": "ok", "score": score, "size_mb": 3.6, "perf": 0.3, "sec_per_token": 0.001,
             "candidate": candidates[model_id]} for tid, model_id, score in TRIALS]
    return rows + [{"trial_id": "t-stopped", "status": "stopped", "score": None, "candidate": None},
                   {"trial_id": "t-error", "status": "error", "score": None, "error": "boom", "candidate": None}]


def _put_sweep(store, name, rows, run_name=None, complete=True, status="ok"):
    run = store.new_run("sweep", name, name=run_name)
    run.put_json("rows.json", rows)
    run.put_json("baseline.json", {"model_id": "llama-a", "perf": 0.3, "sec_per_token": 0.001})
    if complete:
        run.complete(status=status)
    return run.prefix


@pytest.fixture(scope="module")
def store(zoo, tmp_path_factory):
    """Three candidate runs (real zoo models + junk) and sweep "demo": an older run with a single
    trial, the current complete run with all trials, and a newer incomplete one."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    candidates = {model_id: _put_candidate(store, zoo, model_id) for _, model_id, _ in TRIALS}
    rows = _rows(candidates)
    _put_sweep(store, "demo", rows[:1], OLD_RUN)
    _put_sweep(store, "demo", rows, NEW_RUN)
    _put_sweep(store, "demo", rows, OPEN_RUN, complete=False)
    _put_sweep(store, "broken", rows, OLD_RUN, status="failed")
    return store


@pytest.fixture(scope="module")
def packaged(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("submissions")
    keys_before = store.list_keys("")
    paths = package_top(store, "demo", 2, out)
    return paths, out, keys_before


def test_find_sweep_run_refs(store):
    for ref in ("demo", f"demo/{NEW_RUN}", f"sweep/demo/{NEW_RUN}", "sweep/demo", "/demo/"):
        assert find_sweep_run(store, ref).prefix == f"sweep/demo/{NEW_RUN}"
    assert find_sweep_run(store, f"demo/{OLD_RUN}").name == OLD_RUN


def test_find_sweep_run_errors_name_what_exists(store):
    with pytest.raises(PackageError, match=r"sweep 'nope': not found in .* \(stored sweeps: broken, demo\)"):
        find_sweep_run(store, "nope")
    with pytest.raises(PackageError, match=rf"no run '20990101-000000-1' .*3 runs, newest: {OLD_RUN}, {NEW_RUN}, {OPEN_RUN}"):
        find_sweep_run(store, "demo/20990101-000000-1")
    with pytest.raises(PackageError, match=rf"sweep run sweep/demo/{OPEN_RUN}: not complete"):
        find_sweep_run(store, f"demo/{OPEN_RUN}")
    with pytest.raises(PackageError, match=r"sweep 'broken': none of its 1 runs is complete and ok"):
        find_sweep_run(store, "broken")
    with pytest.raises(PackageError, match="sweep ref: expected"):
        find_sweep_run(store, " / ")
    with pytest.raises(StoreError, match="cannot be used in a storage key"):
        find_sweep_run(store, "bad name")


def test_find_sweep_run_in_empty_store(tmp_path):
    with pytest.raises(PackageError, match="no sweeps stored yet"):
        find_sweep_run(LocalStore(tmp_path), "demo")


@pytest.mark.parametrize("name, kept", [
    ("model.safetensors", True), ("model-00001-of-00002.safetensors", True), ("model.safetensors.index.json", True),
    ("config.json", True), ("generation_config.json", True), ("tokenizer.json", True), ("chat_template.jinja", True),
    ("merges.txt", True), ("training_args.bin", False), ("optimizer.pt", False), ("recipe.yaml", False),
    ("pytorch_model.bin", False), ("trainer_state.json", False),
])
def test_is_submission_file(name, kept):
    assert is_submission_file(name) is kept


def test_package_top_writes_the_two_best(packaged, zoo):
    paths, out, _ = packaged
    assert [p.name for p in paths] == ["submit_1.zip", "submit_2.zip"]
    assert sorted(p.name for p in out.iterdir()) == ["submit_1.zip", "submit_2.zip"]  # no temp files left
    for path, model_id in zip(paths, ["exaone4-c", "llama-a"]):
        with zipfile.ZipFile(path) as zf:
            expected = {f"model/{f.name}" for f in (zoo.zoo_dir / model_id).iterdir() if f.is_file()}
            assert set(zf.namelist()) == expected
            assert "model/model.safetensors" in expected and "model/config.json" in expected
            assert zf.read("model/config.json") == (zoo.zoo_dir / model_id / "config.json").read_bytes()


def test_packaged_model_loads(packaged, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(packaged[0][0]) as zf:
        zf.extractall(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.num_hidden_layers == 6 and model.config.vocab_size == 3000
    assert model.config.model_type.startswith("exaone4")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_package_top_never_touches_the_store(packaged, store):
    assert store.list_keys("") == packaged[2]


def test_package_top_refuses_to_overwrite(store, packaged):
    out = packaged[1]
    before = (out / "submit_1.zip").stat().st_mtime_ns
    with pytest.raises(PackageError, match=r"submit_1\.zip already exist.*overwrite=True"):
        package_top(store, "demo", 1, out)
    assert (out / "submit_1.zip").stat().st_mtime_ns == before
    assert package_top(store, "demo", 1, out, overwrite=True) == [out / "submit_1.zip"]
    with zipfile.ZipFile(out / "submit_1.zip") as zf:
        assert json.loads(zf.read("model/config.json"))["model_type"].startswith("exaone4")


@pytest.mark.parametrize("top", [0, 4, -1, True, 1.5])
def test_package_top_rejects_top_out_of_range(store, tmp_path, top):
    with pytest.raises(PackageError, match=r"top: .* is not in 1\.\.3 \(sweep/demo/.* has 3 ranked trials\)"):
        package_top(store, "demo", top, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_package_top_without_ok_trials(tmp_path):
    store = LocalStore(tmp_path / "store")
    _put_sweep(store, "all-stopped", [{"trial_id": "s", "status": "stopped"}])
    with pytest.raises(PackageError, match="has no ok trial with a score to package"):
        package_top(store, "all-stopped", 1, tmp_path / "out")


def test_package_top_checks_every_trial_before_writing(tmp_path):
    store = LocalStore(tmp_path / "store")
    good, hollow = store.new_run("candidate", "good"), store.new_run("candidate", "hollow")
    good.put_bytes("model/config.json", b"{}")
    good.put_bytes("model/model.safetensors", b"weights")
    hollow.put_bytes("model/config.json", b"{}")
    hollow.put_bytes("model/optimizer.pt", b"x")
    good.complete(), hollow.complete()
    _put_sweep(store, "mixed", [{"trial_id": "g", "status": "ok", "score": 0.8, "candidate": good.prefix},
                                {"trial_id": "h", "status": "ok", "score": 0.7, "candidate": hollow.prefix}])
    with pytest.raises(PackageError, match=r"trial 'h': candidate/hollow/.*/model/ needs config.json and "
                                           r"\*.safetensors weights \(has: config.json, optimizer.pt\)"):
        package_top(store, "mixed", 2, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # submit_1 (trial g) was not written either
    (path,) = package_top(store, "mixed", 1, tmp_path / "out")
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["model/config.json", "model/model.safetensors"]
    _put_sweep(store, "nameless", [{"trial_id": "n", "status": "ok", "score": 0.6, "candidate": None}])
    with pytest.raises(PackageError, match=r"trial 'n': its row names no candidate run \(candidate=None\)"):
        package_top(store, "nameless", 1, tmp_path / "out2")


def test_package_top_rejects_index_naming_missing_shards(tmp_path):
    store = LocalStore(tmp_path / "store")
    run = store.new_run("candidate", "sharded")
    run.put_bytes("model/config.json", b"{}")
    run.put_bytes("model/model-00001-of-00002.safetensors", b"w1")
    run.put_json("model/model.safetensors.index.json", {"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    run.complete()
    _put_sweep(store, "sharded", [{"trial_id": "s", "status": "ok", "score": 0.6, "candidate": run.prefix}])
    with pytest.raises(PackageError, match=r"trial 's': .*model.safetensors.index.json names shards that are not "
                                           r"stored: model-00002-of-00002.safetensors"):
        package_top(store, "sharded", 1, tmp_path / "out")


def test_main_prints_written_zips(store, tmp_path, capsys):
    assert main(["demo", "--top", "1", "--out", str(tmp_path), "--store", store.uri]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'submit_1.zip'}"


def test_package_top_from_s3(s3_uri, zoo, tmp_path):
    uri, endpoint_url = s3_uri
    store = S3Store(uri, endpoint_url=endpoint_url)
    candidate = _put_candidate(store, zoo, "qwen3-b")
    _put_sweep(store, "org/remote", [{"trial_id": "r1", "status": "ok", "score": 0.58, "candidate": candidate}])
    (path,) = package_top(store, "org/remote", 1, tmp_path / "out")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert json.loads(zf.read("model/config.json"))["model_type"] == "qwen3"
    assert names == {f"model/{f.name}" for f in (zoo.zoo_dir / "qwen3-b").iterdir() if f.is_file()}
    assert store.exists(f"{candidate}/model/optimizer.pt")
