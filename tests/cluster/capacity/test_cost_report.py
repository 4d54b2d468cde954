"""`yard cost`'s files: markdown, CSV per job and per model, a PNG of spend by outcome."""
import csv
import io

import pytest

from cluster.capacity.cost import JobCost
from cluster.capacity.cost_report import jobs_csv, models_csv, render_markdown, report_section, spend_png, write_outputs
from cluster.capacity.ledger import Ledger
from tests.cluster.capacity.test_cost import make_table, one_of_each


@pytest.fixture
def table(tmp_path):
    return make_table(tmp_path)


@pytest.fixture
def jobs():
    plan = {"units": [{"job_id": "", "kind": "dna", "unit": "a", "node_type": "1xH100", "accelerator": "H100", "gpus": 1,
                       "cpus": 1, "market": "", "phases": {"generate": 1800}}], "basis": {"a": "assumed"},
            "wall_s": 1800.0, "assumptions": ["25 new tokens/s per sequence"]}
    return [JobCost("dna-1", "dna", "failed", "jobs/dna/r1", 21700.0, one_of_each("dna-1").entries, plan),
            JobCost("dna-2", "dna", "succeeded", "jobs/dna/r2", 3600.0, one_of_each("dna-2").entries[:1], None)]


def test_markdown_has_the_headline_jobs_models_and_plan(jobs, table):
    md = render_markdown(jobs, table)
    assert "**2 jobs, $28.00, $12.00 wasted (42.9%)**" in md
    assert "| dna-1 | failed | 6 | 6.0000 | 0.0000 | $24.00 | $12.00 | 50.0% | $6.00 | 25.0% | $4.00 | 2 | $12.00 |" in md
    assert "| job | kept | failed | retried | stalled | stopped |" in md  # spend by outcome
    assert "| dna-1 | b | 2 | kept | 2.0000 | $8.00 | $4.00 | 50.0% | 0.0% |" in md
    assert "## Plan vs actual" in md and "### dna-1" in md and "### dna-2" not in md
    assert "- assumed: 25 new tokens/s per sequence" in md and "Prices: test prices" in md


def test_csv_rows_are_plain_numbers(jobs, table):
    rows = list(csv.DictReader(io.StringIO(jobs_csv(jobs, table))))
    assert [r["job_id"] for r in rows] == ["dna-1", "dna-2"]
    assert float(rows[0]["usd"]) == 24.0 and float(rows[0]["waste_rate"]) == 0.5 and rows[0]["kept"] == "2"
    assert float(rows[1]["waste_rate"]) == 0.0
    models = list(csv.DictReader(io.StringIO(models_csv(jobs, table, market="spot"))))
    b = next(r for r in models if r["job_id"] == "dna-1" and r["unit"] == "b")
    assert b["attempts"] == "2" and b["outcome"] == "kept" and float(b["usd"]) == 4.0 and float(b["waste_usd"]) == 2.0


def test_png_and_all_files_are_written(jobs, table, tmp_path):
    files = write_outputs(jobs, table, tmp_path / "out")
    assert {p.name for p in files.values()} == {"cost.md", "cost_jobs.csv", "cost_models.csv", "cost.png"}
    assert all(p.stat().st_size > 0 for p in files.values())
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    empty = spend_png([JobCost("j", "dna", "failed", "p", None, [], None)], table, tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"  # a job that spent nothing still draws


def test_a_job_report_section_ends_with_the_cost_line_or_says_why_not(jobs, table):
    lines = report_section(jobs[0], table, "intro")
    assert lines[:4] == ["## Cost", "", "intro", ""] and "| unit | planned s |" in "\n".join(lines)
    assert lines[-1].startswith("Cost: $24.00")
    unknown = Ledger("j", "sweep")
    unknown.add(unit="trial a", node_type="gpu", accelerator=None, gpus=1, cpus=1, phases={"train": 5}, outcome="kept")
    lines = report_section(JobCost("j", "sweep", "running", "", None, unknown.entries, None), table)
    assert lines[-1].startswith("Cost: not priced (") and "unknown type" in lines[-1] and len(lines) == 3


def test_a_running_jobs_cost_line_prices_its_ledger_or_says_it_booked_nothing(table, tmp_path):
    from cluster.capacity.cost_report import job_cost_line
    from cluster.ops.jobs import JobContext
    from cluster.store.storage import open_store

    job = JobContext("judge", "j-1", open_store(str(tmp_path)), None, None, ledger=Ledger("j-1", "judge"))
    # an endpoints-only job: no ledger rows, no table needed, and the line says why nothing is priced
    assert job_cost_line(job, None, none_booked="it starts none") == \
        "Cost: no GPU time on this cluster (it starts none)."
    job.ledger.add(unit="m", node_type="1xH100", accelerator="H100", gpus=1, cpus=1, phases={"generate": 3600},
                   outcome="kept")
    assert job_cost_line(job, table).startswith("Cost: $4.00 (1.000 GPU-h, 1 attempt)")
    assert job_cost_line(job, None).startswith("Cost: not priced (")
    job.ledger.add(unit="n", node_type="1xB200", accelerator="B200", gpus=1, cpus=1, phases={"train": 5},
                   outcome="failed")
    assert job_cost_line(job, table).startswith("Cost: not priced (") and "B200" in job_cost_line(job, table)
