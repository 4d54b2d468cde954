"""serve/demo.py: `yard demo`'s Serve step. Which judge it uses (the replay judge unless
YARD_JUDGE_URL and YARD_JUDGE_MODEL name a real one), its shipped config, and a registry without
the demo's candidates refused in one line before Serve starts. The whole step (Serve -> judge ->
probes, about 2 minutes here) runs in tests/cluster/test_demo_sweep_serve_persona.py."""
import pytest

from cluster.config import ConfigError, load_config
from cluster.store.storage_local import LocalStore
from serve import demo as serve_demo
from serve.config import ServeConfig

JUDGE_ENV = ("YARD_JUDGE_URL", "YARD_JUDGE_MODEL", "YARD_JUDGE_KEY_ENV")
MODELS = "kind: models\nmodels:\n{}"


@pytest.fixture
def no_judge_env(monkeypatch):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def registry(tmp_path, *ids) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS.format("".join(f"  {m}:\n    source: org/{m}\n    params_b: 0.001\n" for m in ids)))
    return str(path)


# --- the judge -----------------------------------------------------------------------------------
def test_the_replay_judge_unless_a_real_one_is_named(no_judge_env):
    assert serve_demo._judge().replay is True
    no_judge_env.setenv("YARD_JUDGE_URL", "http://judge.example:8000/v1")
    assert serve_demo._judge().replay is True  # a URL without a model is not a judge
    no_judge_env.setenv("YARD_JUDGE_MODEL", "judge-70b")
    judge = serve_demo._judge()
    assert (judge.replay, judge.base_url, judge.model, judge.api_key_env) == (
        False, "http://judge.example:8000/v1", "judge-70b", "OPENAI_API_KEY")
    no_judge_env.setenv("YARD_JUDGE_KEY_ENV", "JUDGE_KEY")
    assert serve_demo._judge().api_key_env == "JUDGE_KEY"
    no_judge_env.delenv("YARD_JUDGE_URL")
    assert serve_demo._judge().replay is True


@pytest.mark.parametrize(("name", "value", "says"), [
    ("YARD_JUDGE_URL", "judge.example:8000/v1", "expected an http(s) URL"),
    ("YARD_JUDGE_KEY_ENV", "sk-not-a-variable-name", "not the key itself"),
])
def test_a_bad_judge_setting_is_refused(no_judge_env, name, value, says):
    no_judge_env.setenv("YARD_JUDGE_URL", "http://judge.example:8000/v1")
    no_judge_env.setenv("YARD_JUDGE_MODEL", "judge-70b")
    no_judge_env.setenv(name, value)
    with pytest.raises(ConfigError) as exc:  # one line naming the variable, exit 2 from the CLI
        serve_demo._judge()
    assert str(exc.value).startswith(f"{name}: ") and says in str(exc.value) and "\n" not in str(exc.value)


# --- config and bad input ------------------------------------------------------------------------
def test_the_demo_config_serves_two_zoo_models_on_loopback():
    from cluster.models.zoo import default_zoo_config

    cfg = load_config(serve_demo.DEMO_CONFIG, ServeConfig, ["zoo=null"])
    zoo = default_zoo_config()
    zoo_models = {s.name for s in zoo.bases} | {s.name for s in zoo.children}
    assert len(cfg.candidates) == 2 and {c.model for c in cfg.candidates} <= zoo_models
    assert cfg.host == "127.0.0.1" and all(c.engine == "hf" for c in cfg.candidates)


def test_a_registry_without_the_demo_candidates_is_one_line_before_serve_starts(tmp_path, no_ray, no_judge_env):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ConfigError) as err:
        serve_demo.demo(store, registry(tmp_path, "other"))
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{serve_demo.DEMO_CONFIG}: candidates.0.model: 'llama-a'")
    assert "unknown model id (registered: other)" in line
    assert store.list_keys("") == []  # nothing written


def test_a_missing_registry_is_one_line_naming_it(tmp_path, no_ray, no_judge_env):
    missing = tmp_path / "zoo" / "models.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: no such config file$"):
        serve_demo.demo(LocalStore(tmp_path / "store"), str(missing))
