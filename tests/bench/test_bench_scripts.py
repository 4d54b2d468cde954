"""The benchmark scripts cannot rot unseen: each compiles, each Python one prints its `--help`
without running the benchmark or importing a GPU or model library, each shell one parses, each
config (the GPU runs') loads with its kind's schema.

`make bench` runs them rarely and the GPU ones run on other machines; a script that no longer
starts (a SyntaxError from a global declared after use went unnoticed) should fail here, in
`make test`, in about a second."""
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parents[1]
SCRIPTS = sorted(p for p in [*BENCH.glob("*.py"), *BENCH.glob("*/*.py")]
                 if not p.name.startswith(("test_", "__")))
SHELL = sorted(BENCH.rglob("*.sh"))
# what `--help` must not pay for: GPU-only engines and the libraries a benchmark loads models with
HEAVY = ("torch", "vllm", "transformers", "ray", "unsloth", "bitsandbytes")
# runs the script as `python SCRIPT --help` would, then says how it exited and what it imported
HELP = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = "returned"  # no argument parser: the benchmark itself ran
except SystemExit as exc:
    code = exc.code
print("exit:", code, file=sys.stderr)
print("heavy:", ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 10 and SHELL  # the globs still find them


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_script_compiles_and_prints_its_help_without_heavy_imports(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    proc = subprocess.run([sys.executable, "-c", HELP.format(heavy=HEAVY), str(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ") and "-h, --help" in proc.stdout
    assert "exit: 0" in proc.stderr.splitlines(), proc.stderr[-2000:]
    assert "heavy: " in proc.stderr.splitlines(), f"{script.name} --help imported {proc.stderr.splitlines()[-1]}"


@pytest.mark.parametrize("script", SHELL, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_shell_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


CONFIGS = sorted(BENCH.rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_config_loads_with_the_schema_its_kind_names(config):
    # the GPU runs' configs are read on the device only: a field renamed here must fail here
    from cluster.config import load_config

    assert CONFIGS and load_config(config) is not None
