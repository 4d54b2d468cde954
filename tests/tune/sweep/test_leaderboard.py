import csv

import pytest
from PIL import Image

from tune.eval.score import score_breakdown
from tune.sweep.leaderboard import LeaderboardError, fmt, pareto_front, rank_rows, write_leaderboard

BASELINE = {"model_id": "exaone-4.0-1.2b", "perf": 0.3256, "perf.kmmlu_pro": 0.3512, "perf.kmmlu_redux": 0.3711,
            "perf.ko_longrag": 0.2544, "sec_per_token": 0.000273, "size_mb": 2400.0, "layers": 30}
# Seed 002, section 4: lane, perf, bench_s/tok, and its rank by the sheet's Score_proxy.
SEED_LANES = [
    ("lane01_gptq_w4a16", 0.3286, 0.000236, 3), ("lane03_gptq_w8a16", 0.3226, 0.000269, 7),
    ("lane04_fp8_dynamic", 0.3263, 0.000252, 6), ("lane06_sft_gptq_w4a16", 0.2862, 0.000217, 5),
    ("lane08_w4a16_postsft", 0.3247, 0.000240, 4), ("lane10_prune28_kd_w4a16", 0.3095, 0.000262, 8),
    ("lane12_fp8_static", 0.3303, 0.000227, 2), ("unknown", 0.3302, 0.000225, 1),
]


def _row(trial_id, perf=None, spt=None, *, status="ok", quant="fp8_static", size_mb=1200.0, **extra):
    row = {"trial_id": trial_id, "status": status, "prune_depth": 2, "kd_samples": 256, "lora_rank": 8,
           "quant": quant, "ffn_keep_ratio": None, "layers": 28, "perf": perf, "sec_per_token": spt,
           "perf_norm": None, "speed_norm": None, "score": None, "size_mb": size_mb, "kd_loss": None,
           "val_loss": None, "candidate": None, "error": None, "seconds": 30.0}
    if perf is not None and spt is not None:
        b = score_breakdown(perf, spt, BASELINE["perf"], BASELINE["sec_per_token"])
        row.update(perf_norm=b.perf_norm, speed_norm=b.speed_norm, score=b.score,
                   **{"perf.kmmlu_pro": perf + 0.02, "perf.ko_longrag": perf - 0.07, "perf.kmmlu_redux": perf + 0.05})
    row.update(extra)
    return row


def _seed_rows():
    quants = ["w4a16", "w8a16", "fp8_dynamic", "w4a16", "w4a16", "w4a16", "fp8_static", "fp8_static"]
    rows = [_row(name, perf, spt, quant=q, prune_depth=i % 3, kd_samples=64 * i, lora_rank=(8, 16)[i % 2])
            for i, ((name, perf, spt, _), q) in enumerate(zip(SEED_LANES, quants))]
    return rows + [
        _row("t-stopped", status="stopped", val_loss=2.5),
        _row("t-error", status="error", error="CUDA out of memory | at step 3\nTraceback"),
        _row("t-rejected", status="rejected", error="sanity gate: 4 of 8 probe answers empty"),
    ]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    return write_leaderboard(_seed_rows(), BASELINE, out, title="sweep seed-002"), out


def test_rank_rows_follows_the_users_sheet():
    ranked = rank_rows(_seed_rows())
    by_lane = {r["trial_id"]: r["rank"] for r in ranked}
    assert {name: by_lane[name] for name, *_ in SEED_LANES} == {name: rank for name, _, _, rank in SEED_LANES}
    assert [r["rank"] for r in ranked[:8]] == list(range(1, 9))
    # unranked after, in status order
    assert [(r["trial_id"], r["rank"]) for r in ranked[8:]] == [("t-stopped", None), ("t-error", None), ("t-rejected", None)]


def test_rank_rows_breaks_ties_by_size_then_trial_id():
    rows = [_row("c", size_mb=900.0, score=0.6), _row("b", size_mb=500.0, score=0.6), _row("a", size_mb=900.0, score=0.6),
            _row("z", size_mb=None, score=0.6), _row("top", size_mb=5000.0, score=0.7)]
    assert [r["trial_id"] for r in rank_rows(rows)] == ["top", "b", "a", "c", "z"]


def test_rank_rows_leaves_ok_without_score_unranked_and_copies():
    rows = [_row("no-score", status="ok"), _row("x", 0.3, 0.0002), _row("s", status="stopped")]
    ranked = rank_rows(rows)
    assert [(r["trial_id"], r["rank"]) for r in ranked] == [("x", 1), ("no-score", None), ("s", None)]
    assert "rank" not in rows[1]  # the input is not modified


@pytest.mark.parametrize("rows, match", [
    ({"trial_id": "a"}, r"rows: expected a list"),
    ([["a"]], r"rows\[0\]: expected a dict"),
    ([{"status": "ok"}], r"rows\[0\]\.trial_id"),
    ([_row("a"), _row("a")], r"rows\[1\]\.trial_id: 'a' appears more than once"),
    ([_row("a", status="done")], r"rows\[0\]\.status: 'done' is unknown \(allowed: ok, stopped, error, rejected\)"),
])
def test_rank_rows_rejects_bad_rows(rows, match):
    with pytest.raises(LeaderboardError, match=match):
        rank_rows(rows)


def test_pareto_front_exact_ids():
    rows = [
        _row("fast", 0.20, 0.00010), _row("mid", 0.30, 0.00020), _row("best", 0.35, 0.00030),
        _row("mid-twin", 0.30, 0.00020),  # identical point: both on the front
        _row("dominated", 0.25, 0.00025), _row("slower-same-perf", 0.35, 0.00031),
        _row("faster-worse", 0.19, 0.00010),  # same speed as "fast", lower perf
        _row("stopped-great", 0.90, 0.00001, status="stopped"), _row("no-speed", 0.99, None),
    ]
    assert pareto_front(rows) == ["fast", "mid", "mid-twin", "best"]
    assert pareto_front([_row("only", 0.1, 0.1)]) == ["only"]
    assert pareto_front([]) == []


def test_fmt_writes_numbers_like_the_sheet():
    assert [fmt("perf", 0.32861), fmt("sec_per_token", 0.000236), fmt("score", 0.57241), fmt("size_mb", 2400)] == \
        ["0.3286", "0.000236", "0.5724", "2400.0"]
    assert fmt("sec_per_token", 0.0123456) == "0.01235"
    assert fmt("perf", None) == "-" and fmt("perf", float("nan")) == "-"
    assert fmt("kd_samples", 256.0) == "256" and fmt("pareto", True) == "*"


def test_write_leaderboard_writes_every_file(board):
    paths, out = board
    assert set(paths) == {"csv", "md", "html", "score_vs_params", "pareto"}
    for path in paths.values():
        assert path.parent == out and path.stat().st_size > 500


def test_markdown_table_one_line_per_ranked_row_in_order(board):
    md = board[0]["md"].read_text()
    assert md.startswith("# sweep seed-002\n")
    assert "Baseline `exaone-4.0-1.2b`: perf 0.3256 (kmmlu_pro 0.3512, kmmlu_redux 0.3711, ko_longrag 0.2544)" in md
    lines = md.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| rank |"))
    assert lines[header] == ("| rank | trial | prune_depth | kd_samples | lora_rank | quant | kmmlu_pro | kmmlu_redux | "
                             "ko_longrag | perf | sec_per_token | perf_norm | speed_norm | Score | ± | ≈ above | size MB | pareto |")
    table = []
    for ln in lines[header + 2:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip("|").split(" | ")])
    expected = [name for name, *_ in sorted(SEED_LANES, key=lambda lane: lane[3])]
    assert [cells[1] for cells in table] == expected
    assert [cells[0] for cells in table] == [str(i) for i in range(1, 9)]
    lane01 = table[expected.index("lane01_gptq_w4a16")]
    assert lane01[9:14] == ["0.3286", "0.000236", "1.0092", "0.1355", "0.5724"]  # the sheet's Score_proxy
    # "unknown" and lane12 are fastest-best; lane03 is dominated
    assert table[0][-1] == "*" and table[expected.index("lane03_gptq_w8a16")][-1] == ""


def test_markdown_lists_unranked_with_reasons(board):
    md = board[0]["md"].read_text()
    section = md.split("## Not ranked", 1)[1]
    assert "| t-stopped | stopped | early-stopped by ASHA at val_loss 2.5000 |" in section
    assert "| t-error | error | CUDA out of memory \\| at step 3 Traceback |" in section
    assert "| t-rejected | rejected | sanity gate: 4 of 8 probe answers empty |" in section


def test_csv_holds_every_row_ranked_first_with_sorted_benchmarks(board):
    with open(board[0]["csv"], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert len(rows) == 11
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 9)] + ["", "", ""]
    cols = reader.fieldnames
    assert cols[:3] == ["rank", "trial_id", "status"]
    benches = [c for c in cols if c.startswith("perf.")]
    assert benches == ["perf.kmmlu_pro", "perf.kmmlu_redux", "perf.ko_longrag"]
    assert cols.index("perf.ko_longrag") < cols.index("perf") < cols.index("score")
    assert float(rows[0]["score"]) == pytest.approx(0.595, abs=0.002)
    assert rows[-1]["error"] == "sanity gate: 4 of 8 probe answers empty"


def test_plots_are_valid_images(board):
    for key, min_width in (("score_vs_params", 1000), ("pareto", 500)):
        with Image.open(board[0][key]) as img:
            img.verify()
        with Image.open(board[0][key]) as img:
            assert img.format == "PNG" and img.width >= min_width and img.height >= 300
            # not a blank canvas: many distinct colours
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_html_is_self_contained(board):
    page = board[0]["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page
    assert page.count("<tr>") == 1 + 8 + 1 + 3  # ranked header + rows, unranked header + rows
    assert page.count("<script>") == 1 and "<script src" not in page
    assert "<td class=t>CUDA out of memory | at step 3 Traceback</td>" in page


def test_no_ok_rows_still_writes_everything(tmp_path):
    rows = [_row("s1", status="stopped"), _row("e1", status="error", error="boom")]
    paths = write_leaderboard(rows, BASELINE, tmp_path)
    md = paths["md"].read_text()
    assert md.startswith("# Leaderboard: exaone-4.0-1.2b\n")
    assert "2 trials: 0 ranked, 1 stopped, 1 error." in md
    assert "nothing to rank" in md and "| rank |" not in md
    for key in ("score_vs_params", "pareto"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.width > 300
    assert "nothing to rank" in paths["html"].read_text()


def test_single_row_with_missing_values(tmp_path):
    row = _row("solo", 0.31, 0.00025, quant=None, size_mb=None, prune_depth=None, lora_rank=None)
    paths = write_leaderboard([row], {"model_id": "llama-a"}, tmp_path, title="one")
    md = paths["md"].read_text()
    assert "Baseline `llama-a`: perf -, sec_per_token -, size - MB, - layers." in md
    solo = next(ln for ln in md.splitlines() if ln.startswith("| 1 |"))
    assert solo.startswith("| 1 | solo | - | 256 | - | - |") and solo.endswith("| - | * |")
    assert paths["pareto"].stat().st_size > 1000


def test_write_leaderboard_rejects_bad_baseline_and_rows(tmp_path):
    with pytest.raises(LeaderboardError, match="baseline: expected a dict"):
        write_leaderboard([_row("a", 0.3, 0.0002)], None, tmp_path)
    with pytest.raises(LeaderboardError, match=r"rows\[0\]\.status"):
        write_leaderboard([_row("a", status="finished")], BASELINE, tmp_path)
    assert list(tmp_path.iterdir()) == []
