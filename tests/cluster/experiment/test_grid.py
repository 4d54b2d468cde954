"""Conditions, ids, argv and run keys of an experiment's grid (cluster/experiment/grid.py)."""
import pytest

from cluster.config import ConfigError, validate
from cluster.experiment.config import ExperimentConfig
from cluster.experiment.grid import (check_command, condition_id, conditions, render_argv, run_key,
                                     script_files)


def cfg(**kw):
    data = {"kind": "experiment", "name": "exp0", "command": ["python", "x.py", "--m", "{model}", "--s", "{seed}"],
            "grid": {"model": ["llama", "gemma"], "seed": [1, 2]}, **kw}
    return validate(data, ExperimentConfig, "exp.yaml")


def test_the_grid_is_the_product_minus_exclude_plus_include_with_repeats():
    assert conditions(cfg()) == [{"model": "llama", "seed": 1}, {"model": "llama", "seed": 2},
                                 {"model": "gemma", "seed": 1}, {"model": "gemma", "seed": 2}]
    c = conditions(cfg(exclude=[{"model": "gemma", "seed": 2}], include=[{"model": "qwen", "seed": 9}]))
    assert {"model": "gemma", "seed": 2} not in c and c[-1] == {"model": "qwen", "seed": 9} and len(c) == 4
    partial = conditions(cfg(include=[{"model": "qwen"}]))  # completed by every seed
    assert partial[-2:] == [{"model": "qwen", "seed": 1}, {"model": "qwen", "seed": 2}]
    repeated = conditions(cfg(repeats=3))
    assert len(repeated) == 12 and {c["repeat"] for c in repeated} == {0, 1, 2}


def test_condition_ids_are_stable_readable_and_differ_by_experiment_and_value():
    a = condition_id("exp0", {"model": "meta/llama 3", "seed": 1})
    assert a == condition_id("exp0", {"model": "meta/llama 3", "seed": 1})
    assert a.startswith("meta_llama_3-1-") and len(a.rsplit("-", 1)[1]) == 10
    assert a == condition_id("exp0", {"seed": 1, "model": "meta/llama 3"})  # axis order does not matter
    assert a != condition_id("exp1", {"model": "meta/llama 3", "seed": 1})
    assert a != condition_id("exp0", {"model": "meta/llama 3", "seed": "1"})  # 1 and "1" are two values


def test_argv_is_rendered_per_condition_and_the_run_key_follows_code_and_condition():
    c = cfg()
    assert render_argv(c.command, {"model": "llama", "seed": 2}) == ["python", "x.py", "--m", "llama", "--s", "2"]
    k = run_key(c, {"model": "llama", "seed": 2}, "abc")
    assert k == run_key(cfg(), {"model": "llama", "seed": 2}, "abc")
    assert k != run_key(c, {"model": "llama", "seed": 2}, "abd")  # the script changed
    assert k != run_key(cfg(env={"X": "1"}), {"model": "llama", "seed": 2}, "abc")


@pytest.mark.parametrize("kw, needle", [
    ({"command": ["python", "x.py", "{modle}"]}, "command.2: {modle} is not an axis"),
    ({"include": [{"size": 3}]}, "include.0: 'size' is not an axis"),
    ({"exclude": [{"model": "llama"}, {"model": "gemma"}]}, "grid: no condition left"),
])
def test_bad_grids_and_placeholders_name_the_field(kw, needle):
    c = cfg(**kw)
    c._config_file = "exp.yaml"
    with pytest.raises(ConfigError, match="exp.yaml: ") as exc:
        check_command(c)
        conditions(c)
    assert needle in str(exc.value)


def test_script_files_are_hashed_and_a_missing_script_is_named(tmp_path):
    (tmp_path / "x.py").write_text("print(1)\n")
    assert script_files(cfg(), (tmp_path,)) == [(tmp_path / "x.py").resolve()]
    with pytest.raises(ConfigError, match=r"command.1: y.py: no such file"):
        script_files(cfg(command=["python", "y.py"]), (tmp_path,))


def test_bad_input_is_one_line_naming_file_and_field_with_exit_2_before_ray(tmp_path, monkeypatch, capsys):
    """Each refused before Ray starts (cluster.runtime.connect would raise) or a zoo is built."""
    import yaml

    import cluster.runtime
    from cluster.cli import main

    monkeypatch.setattr(cluster.runtime, "connect", lambda *a, **k: pytest.fail("Ray reached"))
    (tmp_path / "x.py").write_text("print(1)\n")
    base = {"kind": "experiment", "name": "e", "command": ["python", str(tmp_path / "x.py"), "{a}"],
            "grid": {"a": [1, 2]}, "storage": {"uri": str(tmp_path / "store")}, "zoo": "configs/zoo.demo.yaml"}
    cases = [
        ({"command": ["python", str(tmp_path / "x.py"), "{b}"]}, "command.2: {b} is not an axis"),
        ({"command": ["python", "nowhere/exp0.py", "{a}"]}, "command.1: nowhere/exp0.py: no such file"),
        ({"command": None, "function": "no_such_pkg.mod:fn"}, "function: no_such_pkg.mod does not import: "
                                                              "ModuleNotFoundError"),
        ({"grid": {}}, "grid: {...}: empty: name at least one axis"),
        ({"include": [{"b": 1}]}, "include.0: 'b' is not an axis"),
        ({"resources": {"num_gpus": 1}}, "0 GPUs < 1"),  # this machine, or the Ray this worker holds
        ({"resources": {"num_cpus": 4096}}, "CPUs < 4096"),
    ]
    for i, (change, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        assert main(["run", str(path), "ray.num_gpus=0"]) == 2, needle
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and needle in err, err
        assert "fits no node" in err or "resources" not in change
    assert not (tmp_path / "store").exists()  # nothing ran, nothing was written
