"""README and docs/ as a newcomer reads them: short, every page linked, and every command they show
run by some test as written (or said here why it cannot run on this machine).

A command is a line of a fenced code block starting with `yard`, `make`, `ray job submit`, `python`,
`tensorboard`, `curl` or `bash`. README's command table lines (a usage, then
its description) must name a real `yard` job. Every other command must match a row of WHERE: the test that runs it,
"demo store" (tests/cluster/test_demo.py runs those against the store its `yard demo` wrote), or
why no test runs it here. A new command in the docs fails this test until it is placed.
"""
import re
from pathlib import Path

import pytest

from cluster.capabilities import JOBS

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_START = re.compile(r"^(yard|make|ray job submit|python3?|tensorboard|curl|bash)\b")
_SYNOPSIS = re.compile(r"^yard \S.*?\s{2,}[^#\s]")  # README's table: the usage, then its description

# Run against the demo store by tests/cluster/test_demo.py, exactly as written (with YARD_STORE set
# to that store and a scratch working directory for the files they write).
DEMO_STORE = ["yard status", "yard status --markdown status.md", "yard cost", "yard cost dna --out cost/"]

# command (regex, matched from the start) -> where it runs
WHERE = [
    (r"make demo\b", "tests/cluster/test_demo.py and test_demo_sweep_serve_persona.py (yard demo, in two "
                     "halves) and the fresh-clone check before an issue is resolved (make demo)"),
    (r"make test\b", ".ci/run"),
    (r"yard dna configs/dna.demo.yaml --dry-run .*prices\.seed", "tests/actors/test_dna_cost.py (the seed's node "
                                                                "start priced, warm and fresh)"),
    (r"yard dna configs/dna.demo.yaml --dry-run", "tests/actors/test_dna_job.py"),
    (r"yard dna configs/dna.demo.yaml hosts\.fresh_per_model=true", "tests/actors/test_dna_job.py (a fresh host "
                                                                    "per model)"),
    (r"yard dna configs/dna.demo.yaml", "tests/cluster/test_demo.py (the DNA step)"),
    (r"yard run configs/experiment.demo.yaml", "tests/cluster/test_demo.py (the run step)"),
    (r"yard run exp0.yaml grid\.model=.* --plan", "tests/cluster/experiment/test_job.py (--plan; exp0.yaml is the page's example)"),
    (r"yard run exp0.yaml( --force)?\s*(#|$)", "tests/cluster/experiment/test_job.py (rerun and resume)"),
    (r"ray job submit --working-dir \. -- yard run", "tests/cluster/test_ray_submit.py (a real ray start --head)"),
    (r"ray job submit --address http://HEAD:8265", "tests/cluster/test_ray_submit.py (the same submission; HEAD is yours)"),
    (r"yard cluster config configs/cluster.example.yaml", "tests/cluster/capacity/test_launch.py"),
    (r"yard persona configs/persona.demo.yaml --plan", "tests/tune/persona/test_job.py"),
    (r"yard persona configs/persona.demo.yaml", "tests/cluster/test_demo_sweep_serve_persona.py (the persona step)"),
    (r"yard sweep configs/persona-sweep.demo.yaml", "tests/tune/persona/test_sweep.py"),
    (r"yard serve configs/serve.demo.yaml --from-leaderboard", "tests/serve/test_serve_job.py"),
    (r"yard serve configs/serve.demo.yaml", "tests/cluster/test_demo_sweep_serve_persona.py (the serve step)"),
    (r"yard judge configs/judge.demo.yaml", "tests/cluster/test_demo_sweep_serve_persona.py (the serve step's judge)"),
    (r"yard probe configs/probe.demo.yaml", "tests/cluster/test_demo_sweep_serve_persona.py (the serve step's probes)"),
    (r"yard sweep configs/sweep.demo.yaml --resume", "tests/tune/sweep/test_sweep.py (kill and resume)"),
    (r"yard sweep configs/sweep.demo.yaml", "tests/cluster/test_demo_sweep_serve_persona.py (the quick sweep) and tests/tune/sweep/test_sweep.py"),
    (r"yard package demo --top 3", "tests/tune/sweep/test_package.py"),
    (r"tensorboard --logdir", "not here: TensorBoard is not a dependency; tests/tune/sweep/test_sweep.py checks the "
                              "event files it reads"),
    *[(re.escape(c) + r"\s*(#|$)", "demo store") for c in DEMO_STORE],
]


def commands() -> list[tuple[str, int, str]]:
    """(page, line, command) for every command line in a fenced block of README.md and docs/."""
    out = []
    for page in PAGES:
        block = False
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.strip().startswith("```"):
                block = not block
                continue
            text = line.strip().removeprefix("$ ")
            if block and _START.match(text):
                out.append((page.name, number, text))
    return out


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    unlinked = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert unlinked == []


def test_every_documented_command_runs_in_a_test_or_says_why_not():
    unplaced, synopses = [], 0
    for page, number, cmd in commands():
        if page == "README.md" and _SYNOPSIS.match(cmd):
            job = cmd.split()[1]
            assert job in JOBS, f"README.md:{number}: yard {job} is not a job"
            synopses += 1
            continue
        if page == "development.md" and "cluster/cli.py" in cmd:  # the architecture diagram, not a command
            continue
        where = next((w for rx, w in WHERE if re.match(rx, cmd)), None)
        if where is None:
            unplaced.append(f"{page}:{number}: {cmd}")
        elif where.startswith("tests/"):
            path = REPO / where.split("::")[0].split(" ")[0]
            assert path.is_file(), f"{page}:{number}: {cmd} -> {where}: no such test file"
    assert synopses >= 10 and unplaced == [], "\n".join(unplaced)


@pytest.mark.parametrize("cmd", DEMO_STORE)
def test_demo_store_commands_are_real_yard_commands(cmd):
    assert cmd.split()[1] in JOBS
