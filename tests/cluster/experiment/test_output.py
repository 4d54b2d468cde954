"""A script's output read as lines, progress, phases and result; the bounded log (output.py)."""
from cluster.experiment.config import DEFAULT_PROGRESS
from cluster.experiment.output import BoundedLog, LineSplitter, OutputReader


def test_carriage_returns_end_lines_as_tqdm_writes_them():
    s = LineSplitter()
    assert s.feed(b"load") == []
    assert s.feed(b"ing\r 10%|#  | 1/10 [00:01<00:09]\r 20%|##") == ["loading", " 10%|#  | 1/10 [00:01<00:09]"]
    assert s.feed(b" | 2/10\r\ndone\n") == [" 20%|## | 2/10", "done"]
    assert s.flush() == []


def test_progress_phases_and_the_last_json_object_line():
    r = OutputReader(DEFAULT_PROGRESS, {"Loading": "loading", r"^Round": "playing"})
    seen = r.read(" 45%|####5     | 58/128 [01:12<01:27,  1.25s/it]", "stderr")
    assert (seen.done, seen.total, seen.phase) == (58, 128, None)
    assert r.read("Loading checkpoint shards").phase == "loading"
    assert r.read("Round 3/10").done == 3 and r.read("Round 3/10").phase == "playing"
    assert r.read("date 12/3").done is None  # 12 of 3 is not progress
    assert r.read('{"acc": 0.5}', "stdout").result == {"acc": 0.5}
    assert r.read('{"acc": 0.5}', "stderr").result is None and r.read("{not json}").result is None
    assert OutputReader(None).read("5/10").done is None


def test_the_log_keeps_its_head_and_tail_and_says_what_it_left_out(tmp_path):
    log = BoundedLog(tmp_path / "c.log", limit_bytes=4096)
    for i in range(2000):
        log.write(f"line {i:05d}\n".encode())
    log.close()
    text = (tmp_path / "c.log").read_text()
    assert len(text) < 4096 + 300
    assert text.startswith("line 00000") and text.rstrip().endswith("line 01999")
    assert "bytes of output left out" in text and "line 01000" not in text
