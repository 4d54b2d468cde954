"""Config loading: YAML + pydantic, overrides, and one-line errors (file: dotted.path: ...)."""
from pathlib import Path

import pytest

from cluster.config import ConfigError, apply_overrides, check_paths, load_config
from cluster.models.registry import ModelsFile

GOOD = """kind: models
models:
  tiny:
    source: org/tiny
    params_b: 0.1
    load_in: bf16
"""


def write(tmp_path, text, name="m.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_valid_file_by_kind(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, ModelsFile)
    assert cfg.models["tiny"].load_in == "bf16"


def test_overrides_set_nested_values_parsed_as_yaml(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), overrides=["models.tiny.load_in=fp16", "models.tiny.params_b=0.25"])
    assert cfg.models["tiny"].load_in == "fp16"
    assert cfg.models["tiny"].params_b == 0.25
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    assert apply_overrides({"xs": [{"n": 1}, {"n": 2}]}, ["xs.1.n=5"]) == {"xs": [{"n": 1}, {"n": 5}]}
    with pytest.raises(ConfigError, match="7 is not an index of a list of 2"):
        apply_overrides({"xs": [1, 2]}, ["xs.7=0"])
    with pytest.raises(ConfigError, match="a is not a mapping or list"):
        apply_overrides({"a": 3}, ["a.b=1"])


def test_bad_value_names_file_path_value_and_allowed(tmp_path):
    p = write(tmp_path, GOOD.replace("load_in: bf16", "load_in: 3bit"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: models.tiny.load_in: '3bit'")
    assert "allowed:" in msg and "'4bit'" in msg


def test_numeric_bound_and_unknown_field(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.tiny\.params_b: -1.*allowed: gt 0"):
        load_config(write(tmp_path, GOOD.replace("params_b: 0.1", "params_b: -1")))
    with pytest.raises(ConfigError, match=r"models\.tiny\.colour: 'red'.*unknown field"):
        load_config(write(tmp_path, GOOD + "    colour: red\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("kind: models\nmodels: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("models: {}\n", "kind: missing"),
        ("kind: nonsense\n", "kind: 'nonsense' is not a config kind"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(write(tmp_path, GOOD), overrides=["novalue"])


def test_check_paths_reports_each_file(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("bf16", "2bit"), "b.yaml")
    results = dict(check_paths([str(tmp_path)]))
    assert results[str(tmp_path / "a.yaml")] is None
    assert "models.tiny.load_in" in results[str(tmp_path / "b.yaml")]


def test_yard_store_replaces_a_relative_store_and_a_ray_job_scratch_dir_refuses_one(tmp_path, monkeypatch):
    from cluster.config import StorageConfig

    monkeypatch.delenv("YARD_STORE", raising=False)
    assert StorageConfig().uri == ".yard"
    monkeypatch.setenv("YARD_STORE", "s3://bucket/yard")
    assert StorageConfig().uri == "s3://bucket/yard"  # the laptop default gives way
    assert StorageConfig(uri="/data/yard").uri == "/data/yard"  # an absolute path is the user's word
    monkeypatch.delenv("YARD_STORE")
    scratch = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "pkg"
    scratch.mkdir(parents=True)
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what a Ray job's entrypoint sees
    cfg = tmp_path / "chat.yaml"
    cfg.write_text("kind: chat\nstorage: {uri: .yard}\n")
    with pytest.raises(ConfigError, match=r"chat.yaml: storage.uri: .*'.yard' is relative.*YARD_STORE"):
        load_config(cfg)
    assert load_config(cfg, overrides=[f"storage.uri={tmp_path}/store"]).storage.uri == f"{tmp_path}/store"


@pytest.mark.parametrize("kind", ["chat", "dna", "sweep", "persona", "serve"])
def test_every_job_config_shares_one_job_block(kind):
    """storage / ray / zoo / registry and their registry files come from one class (JobConfig)."""
    from cluster.config import JobConfig, schema_for_kind

    cls = schema_for_kind(kind)
    assert issubclass(cls, JobConfig) and list(cls.model_fields)[:5] == ["kind", "storage", "ray", "zoo", "registry"]
    assert cls.registry_paths is JobConfig.registry_paths or kind == "serve"  # serve: none needed for paths


def test_registry_paths_without_registry_or_zoo_name_the_job(tmp_path):
    from cluster.config import schema_for_kind

    dna = schema_for_kind("dna").model_validate({"registry": [], "zoo": None})
    with pytest.raises(ConfigError, match=r"^dna: registry: empty and no zoo configured"):
        dna.registry_paths()
    models = tmp_path / "models.yaml"
    assert dna.model_copy(update={"registry": [str(models)]}).registry_paths() == [str(models)]


def test_job_command_line_is_the_same_for_every_job(tmp_path):
    """`CONFIG [key=value ...]`, `--set key=value` as an alias, the job's own flags anywhere."""
    from cluster.config import job_config, job_parser, schema_for_kind

    cfg_file = tmp_path / "dna.yaml"
    cfg_file.write_text("kind: dna\nregistry: [a.yaml]\ngeneration: {max_new_tokens: 77}\n")
    parser = job_parser("yard dna", "test", default_config=cfg_file)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_intermixed_args(["--dry-run", "generation.batch_size=3", "--set", "registry=[b.yaml]"])
    cfg = job_config(args, schema_for_kind("dna"))
    assert args.dry_run and cfg.generation.max_new_tokens == 77  # the default config, CONFIG left out
    assert args.config == str(cfg_file)  # what the job reports as its config file
    assert cfg.generation.batch_size == 3 and cfg.registry == ["b.yaml"]
    with pytest.raises(SystemExit):  # a job without a demo config needs its CONFIG
        job_parser("yard probe", "test").parse_intermixed_args([])


def test_a_path_in_a_config_resolves_one_way(tmp_path, monkeypatch):
    """cwd first, then the config file's folder, then the extra roots; else under the config's folder."""
    from cluster.config import resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("x")
    cfg = tmp_path / "configs" / "sweep.yaml"
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "d.txt").write_text("x")
    assert resolve_config_path("here.txt", cfg) == Path("here.txt")  # exists in the working directory
    assert resolve_config_path("data/cal.txt", cfg) == tmp_path / "configs" / "data" / "cal.txt"
    assert resolve_config_path("/abs/cal.txt", cfg) == Path("/abs/cal.txt")
    assert resolve_config_path("data/cal.txt", None) == Path("data/cal.txt")
    assert resolve_config_path("data/d.txt", cfg, roots=(tmp_path / "repo",)) == tmp_path / "repo" / "data" / "d.txt"


def test_a_loaded_config_knows_its_file(tmp_path):
    path = tmp_path / "dna.yaml"
    path.write_text("kind: dna\n")
    cfg = load_config(path)
    assert cfg.config_file == str(path) and cfg.model_copy().config_file == str(path)
