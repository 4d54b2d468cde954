"""cluster/capabilities.py: every entry of the job, config-kind and demo tables names a module and
an attribute that exist (checked from the source, without importing the heavy packages), and
cluster/ imports none of actors/, tune/ or serve/ by loading the tables."""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.capabilities import CONFIG_KINDS, DEMOS, JOB_HELP, JOBS
from cluster.config import schema_for_kind

REPO = Path(__file__).resolve().parents[2]


def top_level_names(module: str) -> set[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module}: no such module"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("table, name", [(t, n) for t in ("JOBS", "CONFIG_KINDS", "DEMOS")
                                         for n in {"JOBS": JOBS, "CONFIG_KINDS": CONFIG_KINDS, "DEMOS": DEMOS}[t]])
def test_every_entry_names_an_existing_module_and_attribute(table, name):
    target = {"JOBS": JOBS, "CONFIG_KINDS": CONFIG_KINDS, "DEMOS": DEMOS}[table][name]
    module, sep, attr = target.partition(":")
    assert sep and module and attr, f"{table}[{name!r}] = {target!r}: expected 'module:attribute'"
    assert attr in top_level_names(module), f"{table}[{name!r}]: {module} defines no {attr}"


def test_every_job_has_one_help_line_and_every_demo_is_a_job():
    assert set(JOB_HELP) == set(JOBS)
    assert all(line and "\n" not in line for line in JOB_HELP.values())
    assert set(DEMOS) <= set(JOBS)


def test_a_config_kind_resolves_to_its_schema_and_an_unknown_one_is_a_key_error():
    from cluster.models.registry import ModelsFile

    assert schema_for_kind("models") is ModelsFile
    with pytest.raises(KeyError):
        schema_for_kind("no-such-kind")


def test_loading_the_tables_imports_no_capability_package():
    code = ("import sys, cluster.capabilities, cluster.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'actors', 'tune', 'serve'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
