"""The floors: cluster < actors < serve < tune. No module imports a package above its own floor,
lazy imports inside functions included (tune uses serve's judge and probes; serve reads what
tune publishes from the store, never tune's code)."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UPPER = {"actors", "tune", "serve"}


FLOORS = ("cluster", "actors", "serve", "tune")


def _imports(path: Path) -> list[str]:
    """Every absolute module an import in `path` names, at any depth (lazy imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_package_imports_one_above_its_floor():
    offenders = []
    for floor, package in enumerate(FLOORS):
        above = set(FLOORS[floor + 1:])
        for path in sorted((REPO / package).rglob("*.py")):
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in _imports(path) if n.split(".")[0] in above]
    assert offenders == []


def test_importing_the_cli_loads_no_capability_package():
    code = "import sys, cluster.cli, cluster.config; print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % UPPER
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
