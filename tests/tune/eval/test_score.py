import math

import pytest

from tune.eval.score import ScoreBreakdown, score, score_breakdown, sec_per_token

BASE_PERF, BASE_SPT = 0.3256, 0.000273  # seed 002, section 5.1 (results/baseline.json)

# Seed 002, section 4: lane, perf, bench_s/tok, Score_proxy (local).
SEED_002_LANES = [
    ("lane01_gptq_w4a16", 0.3286, 0.000236, 0.5724),
    ("lane02_gptq_w4a16_damp", 0.3172, 0.000235, 0.5567),
    ("lane03_gptq_w8a16", 0.3226, 0.000269, 0.5027),
    ("lane04_fp8_dynamic", 0.3263, 0.000252, 0.5395),
    ("lane05_sft_fp16", 0.2981, 0.000237, 0.5237),
    ("lane06_sft_gptq_w4a16", 0.2862, 0.000217, 0.5421),
    ("lane07_sft_gptq_w4a16_damp", 0.2909, 0.000220, 0.5438),
    ("lane08_w4a16_postsft", 0.3247, 0.000240, 0.5591),
    ("lane09_w4a16_damp_postsft", 0.3154, 0.000238, 0.5484),
    ("lane10_prune28_kd_w4a16", 0.3095, 0.000262, 0.4954),
    ("lane11_prune26_kd_w4a16", 0.2564, 0.000244, 0.4468),
    ("lane12_fp8_static", 0.3303, 0.000227, 0.5915),
    ("fp8_dynamic_submitted", 0.3247, 0.000251, 0.5389),
    ("pruned22_kd_fp8static", 0.2061, 0.000289, 0.2872),
    ("unknown", 0.3302, 0.000225, 0.595),
]
# The table rounds its inputs to 4 significant digits: sec_per_token by up to 0.5e-6 (both candidate
# and baseline), which moves 0.5 * SpeedNorm by up to about 0.5 * 2 * 0.5e-6 / 0.000273 ~ 0.0018;
# perf by 0.5e-4, moving 0.5 * PerfNorm by ~0.0001. 0.002 covers that and would still catch any
# change to the formula (a swapped weight or a missing "1 -" moves lane01 by > 0.05).
TABLE_TOL = 0.002


@pytest.mark.parametrize("lane,perf,spt,expected", SEED_002_LANES, ids=[r[0] for r in SEED_002_LANES])
def test_seed_002_lanes_reproduce_score_proxy(lane, perf, spt, expected):
    assert score(perf, spt, BASE_PERF, BASE_SPT) == pytest.approx(expected, abs=TABLE_TOL)


def test_formula_exactly():
    parts = score_breakdown(0.6, 0.75, baseline_perf=0.5, baseline_sec_per_token=1.0)
    assert parts == ScoreBreakdown(perf_norm=pytest.approx(1.2), speed_norm=pytest.approx(0.25), score=pytest.approx(0.725))
    assert score(0.5, 1.0, 0.5, 1.0) == pytest.approx(0.5)  # the baseline against itself


def test_floor_at_zero():
    # Slow and weak: 0.5 * 0.1 + 0.5 * (1 - 3) = -0.95 before the floor.
    assert score(0.05, 3.0, 0.5, 1.0) == 0.0
    assert score_breakdown(0.05, 3.0, 0.5, 1.0).speed_norm == pytest.approx(-2.0)
    # A SpeedNorm below 0 alone does not hit the floor: 0.5 * 2 + 0.5 * (-0.5) = 0.75.
    assert score(1.0, 1.5, 0.5, 1.0) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "args,name",
    [
        ((0.3, 0.0002, 0.0, 0.000273), "baseline_perf"),
        ((0.3, 0.0002, -0.1, 0.000273), "baseline_perf"),
        ((0.3, 0.0002, 0.3256, 0.0), "baseline_sec_per_token"),
        ((-0.1, 0.0002, 0.3256, 0.000273), "perf"),
        ((0.3, -1e-6, 0.3256, 0.000273), "sec_per_token"),
        ((math.nan, 0.0002, 0.3256, 0.000273), "perf"),
        ((0.3, math.inf, 0.3256, 0.000273), "sec_per_token"),
        ((0.3, "fast", 0.3256, 0.000273), "sec_per_token"),
    ],
)
def test_bad_input_raises_one_line_naming_the_argument(args, name):
    with pytest.raises(ValueError) as info:
        score(*args)
    message = str(info.value)
    assert message.startswith(f"{name}:") and "\n" not in message


def test_sec_per_token():
    assert sec_per_token(12.0, 48_000) == pytest.approx(0.00025)
    assert sec_per_token(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="^generated_tokens: must be > 0"):
        sec_per_token(12.0, 0)
    with pytest.raises(ValueError, match="^total_generation_seconds:"):
        sec_per_token(-1.0, 10)
