"""cluster/ is the ground floor: no module in it imports actors/, tune/ or serve/."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UPPER = {"actors", "tune", "serve"}


def test_cluster_never_imports_upper_packages():
    offenders = []
    for path in (REPO / "cluster").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in UPPER]
    assert offenders == []


def test_importing_the_cli_loads_no_capability_package():
    code = "import sys, cluster.cli, cluster.config; print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % UPPER
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_yard_help_lists_the_jobs():
    r = subprocess.run([sys.executable, "-m", "cluster", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for job in ("zoo", "config", "status", "demo"):
        assert f"\n  {job} " in r.stdout
    bad = subprocess.run([sys.executable, "-m", "cluster", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown job 'frobnicate'" in bad.stderr
