"""The floors: cluster < actors < serve < tune. No module imports a package above its own floor,
lazy imports inside functions included (tune uses serve's judge and probes; serve reads what
tune publishes from the store, never tune's code). Nor do modules import each other in a circle,
on one floor or across several: the piece two modules share moves down. And no folder of the four
packages or of tests/ holds more than 15 Python modules directly: past that it holds two rooms."""
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


def _module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the four packages (a package is its __init__.py)."""
    names = {}
    for package in FLOORS:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {project module it imports: the line of its first such import}, lazy imports and
    `if TYPE_CHECKING:` blocks included. `from a import b` imports `a`, and `a.b` when that is a module."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, one level up per extra dot
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[name] = edges
    return graph


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: every strongly connected component of more than one module (Tarjan),
    each as its sorted module names, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a component: pop it
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


def test_no_modules_import_each_other_in_a_circle():
    modules = _module_names()
    graph = _import_graph(modules)
    report = []
    for circle in _circles(graph):
        report.append(f"a circle of {len(circle)}: {', '.join(circle)}")
        report += [f"    {m} -> {w}  ({modules[m].relative_to(REPO)}:{line})"
                   for m in circle for w, line in sorted(graph[m].items()) if w in circle]
    assert not report, "import circles (move the shared piece down):\n" + "\n".join(report)


def test_the_circle_finder_names_each_circle_and_nothing_outside_it():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"a": 1, "f": 1}, "f": {"e": 1}}
    assert _circles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert _circles({"a": {"b": 1}, "b": {}}) == []


MAX_MODULES = 15


def _crowded_folders(roots: list[Path]) -> list[str]:
    """Folders under `roots` (themselves included) holding more than MAX_MODULES *.py files directly,
    each as "folder: count"."""
    crowded = []
    for root in roots:
        for folder in sorted({root, *(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__")}):
            count = len(list(folder.glob("*.py")))
            if count > MAX_MODULES:
                crowded.append(f"{folder.relative_to(REPO)}: {count}")
    return crowded


def test_no_folder_holds_more_than_15_modules():
    """Every *.py file directly in a folder counts, __init__.py and conftest.py included: a
    newcomer opening the folder sees them all."""
    crowded = _crowded_folders([REPO / p for p in FLOORS] + [REPO / "tests"])
    assert crowded == [], "folders past 15 modules (split each into rooms):\n" + "\n".join(crowded)


def test_the_crowded_folder_finder_counts_modules_directly_in_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "pkg" / "room").mkdir(parents=True)
    for i in range(MAX_MODULES):
        (tmp_path / "pkg" / f"m{i}.py").write_text("")
        (tmp_path / "pkg" / "room" / f"m{i}.py").write_text("")
    (tmp_path / "pkg" / "notes.txt").write_text("")
    assert _crowded_folders([tmp_path / "pkg"]) == []
    (tmp_path / "pkg" / "room" / "one_more.py").write_text("")
    assert _crowded_folders([tmp_path / "pkg"]) == [f"pkg/room: {MAX_MODULES + 1}"]
