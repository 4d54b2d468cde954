"""tune/sweep_cli.py: `yard sweep CONFIG` runs the sweep the config's kind names."""
from pathlib import Path

import pytest

from tune import sweep_cli
from tune.persona import sweep as persona_sweep
from tune.sweep import sweep

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def ran(monkeypatch) -> list:
    """Which sweep's main ran, with what arguments (neither starts any work)."""
    calls = []
    monkeypatch.setattr(sweep, "main", lambda argv: calls.append(("sweep", argv)) or 0)
    monkeypatch.setattr(persona_sweep, "main", lambda argv: calls.append(("persona_sweep", argv)) or 0)
    return calls


def test_the_config_kind_chooses_the_sweep(ran):
    persona = [str(CONFIGS / "persona-sweep.demo.yaml"), "search.num_samples=1"]
    assert sweep_cli.main(persona) == 0
    assert sweep_cli.main([str(CONFIGS / "sweep.demo.yaml"), "--plan"]) == 0
    assert sweep_cli.main(["name=other"]) == 0  # no CONFIG: the compression sweep's demo config
    assert ran == [("persona_sweep", persona), ("sweep", [str(CONFIGS / "sweep.demo.yaml"), "--plan"]),
                   ("sweep", ["name=other"])]


def test_a_missing_config_is_one_line(ran, tmp_path):
    from cluster.config import ConfigError

    with pytest.raises(ConfigError, match="no such config file"):
        sweep_cli.main([str(tmp_path / "none.yaml")])
    assert ran == []
