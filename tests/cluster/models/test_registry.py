"""cluster/models/registry.py: source kinds, registry files merged (relative paths, duplicate ids), unknown
ids named in one line, lineage families."""
import pytest

from cluster.config import ConfigError, validate
from cluster.models.registry import ModelRegistry, ModelSpec, ModelsFile, source_kind


def spec(**kw):
    return ModelSpec(**{"source": "org/model", "params_b": 1.0, **kw})


def test_source_kinds_and_bad_sources(tmp_path):
    assert source_kind("s3://bucket/models/x") == "s3"
    assert source_kind("LGAI-EXAONE/EXAONE-4.0-1.2B") == "hf"
    assert source_kind(str(tmp_path)) == "local"
    for bad in ("gs://bucket/x", "just-a-name", "a/b/c"):
        with pytest.raises(ValueError):
            source_kind(bad)


def test_registry_merges_files_resolves_relative_paths_and_rejects_duplicates(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "models.yaml").write_text(
        "kind: models\nmodels:\n  a:\n    source: ./a\n    params_b: 0.001\n  b:\n    source: ./b\n    params_b: 0.001\n"
        "    parent: a\n    derivation: continued\n"
    )
    (tmp_path / "ref.yaml").write_text("kind: models\nmodels:\n  r:\n    source: org/r\n    params_b: 1\n")
    reg = ModelRegistry.load([tmp_path / "ref.yaml", tmp_path / "zoo" / "models.yaml"])
    assert reg.ids() == ["a", "b", "r"]
    assert reg.get("a").source == str(tmp_path / "zoo" / "a")
    assert reg.family_of("b") == "a"
    with pytest.raises(ConfigError, match="model 'zzz': unknown model id .*registered: a, b, r"):
        reg.get("zzz")
    (tmp_path / "dup.yaml").write_text("kind: models\nmodels:\n  r:\n    source: org/r2\n    params_b: 1\n")
    with pytest.raises(ConfigError, match="models.r: already defined in"):
        ModelRegistry.load([tmp_path / "ref.yaml", tmp_path / "dup.yaml"])


def test_check_ids_names_the_config_file_field_and_index():
    reg = ModelRegistry({"a": spec(), "b": spec()})
    reg.check_ids(["a", "b"], "dna.yaml")  # all registered: nothing raised
    with pytest.raises(ConfigError) as e:
        reg.check_ids(["a", "nope"], "dna.yaml")
    assert str(e.value) == "dna.yaml: models.1: 'nope': unknown model id (registered: a, b)"
    with pytest.raises(ConfigError, match=r"^serve.yaml: candidates.0.model: 'x': unknown model id \(registered: none\)$"):
        ModelRegistry({}).check_ids(["x"], "serve.yaml", field="candidates.{i}.model")


def test_check_ids_lists_at_most_twelve_registered_ids():
    reg = ModelRegistry({f"m{i:02d}": spec() for i in range(15)})
    with pytest.raises(ConfigError) as e:
        reg.check_ids(["zzz"], "c.yaml")
    assert "m11 ..." in str(e.value) and "m12" not in str(e.value)


def test_family_is_declared_else_the_root_of_the_parent_chain():
    reg = ModelRegistry({
        "root": spec(),
        "kid": spec(parent="root", derivation="pruned"),
        "grandkid": spec(parent="kid", derivation="quantized"),
        "declared": spec(parent="root", lineage_family="other-family"),
        "orphan": spec(parent="not-registered"),
        "loop-a": spec(parent="loop-b"),
        "loop-b": spec(parent="loop-a"),
    })
    assert reg.family_of("grandkid") == "root" and reg.family_of("root") == "root"
    assert reg.family_of("declared") == "other-family"
    assert reg.family_of("orphan") == "orphan"  # a parent outside the registry ends the chain
    assert reg.family_of("loop-a") in ("loop-a", "loop-b")  # a cycle ends instead of looping for ever
    with pytest.raises(ConfigError, match="model 'nope': unknown model id"):
        reg.family_of("nope")


@pytest.mark.parametrize("entry, field", [
    ({"source": "org/m", "params_b": 0}, "models.m.params_b"),
    ({"source": "org/m", "params_b": 1, "load_in": "3bit"}, "models.m.load_in"),
    ({"source": "gs://bucket/m", "params_b": 1}, "models.m.source"),
    ({"source": "org/m", "params_b": 1, "num_gpus": 0}, "models.m.num_gpus"),
    ({"source": "org/m", "params_b": 1, "colour": "red"}, "models.m.colour"),
])
def test_bad_entries_name_the_field(entry, field):
    with pytest.raises(ConfigError, match=rf"^models.yaml: {field}: "):
        validate({"kind": "models", "models": {"m": entry}}, ModelsFile, "models.yaml")


def test_entry_defaults_and_source_kind_property():
    m = spec()
    assert (m.family, m.dtype, m.load_in, m.num_gpus, m.derivation) == ("other", "bf16", "bf16", 1, "base")
    assert m.source_kind == "hf" and spec(source="s3://b/p").source_kind == "s3"
    assert spec(source="./here").source_kind == "local"
