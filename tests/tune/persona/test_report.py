"""tune/persona/report.py: the persona job's loss plot (the whole report is exercised by the job's
own tests, tests/tune/persona/test_job.py)."""
import pytest

from tune.persona.report import plot_losses
from tune.persona.train import StageResult, TrainError


def test_loss_plot_has_a_panel_per_stage_and_skips_missing_points(tmp_path):
    sft = StageResult("sft", "a", log=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7},
                                       {"step": 3, "loss": float("nan")}])
    dpo = StageResult("dpo", "b", log=[{"step": 1, "loss": 0.69}])
    png = plot_losses([sft, dpo], tmp_path / "out" / "losses.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_stage_is_a_one_line_error(tmp_path):
    with pytest.raises(TrainError, match="results: no stages to plot"):
        plot_losses([], tmp_path / "x.png")
