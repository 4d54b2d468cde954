"""cluster/models/zoo_cli.py: `yard zoo build | list` (the zoo itself: test_zoo.py)."""
import yaml

from cluster.models.zoo_cli import list_zoo, main
from tests.cluster.models.test_zoo import tiny_zoo_data


def test_cli_list_shows_every_model(zoo, capsys):
    assert main(["list", "--zoo-dir", str(zoo.zoo_dir)]) == 0
    out = capsys.readouterr().out
    for row in list_zoo(zoo.zoo_dir):
        line = next(ln for ln in out.splitlines() if f" {row['id']} " in ln)
        assert row["architecture"] in line and row["derivation"] in line and f"{row['params']:,}" in line


def test_cli_build_reports_a_cache_hit_and_config_errors(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_zoo_data(tmp_path / "zoo")))
    assert main(["build", str(path)]) == 0
    assert main(["build", str(path), "batch_size=2"]) == 0  # an override equal to the file: same hash
    assert "cache hit" in capsys.readouterr().out

    bad = tiny_zoo_data(tmp_path / "zoo")
    bad["children"][0]["parent"] = "ghost"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["build", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "children.0.parent: 'ghost': unknown parent" in err
    assert main(["build", str(path), "seq_len=4"]) == 2
    assert "seq_len: 4" in capsys.readouterr().err
    assert main(["list", "--zoo-dir", str(tmp_path / "nowhere")]) == 2
    assert "no zoo here" in capsys.readouterr().err
