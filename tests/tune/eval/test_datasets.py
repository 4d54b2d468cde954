import json
from pathlib import Path

import pytest

from cluster.config import UserError
from tune.eval.datasets import BenchmarkSchemaError, BenchmarkSourceError, load_mcq, load_qa

REPO = Path(__file__).resolve().parents[3]
MCQ_SAMPLE = REPO / "configs/bench/kmmlu_sample.jsonl"
QA_SAMPLE = REPO / "configs/bench/ko_longrag_sample.jsonl"
GOOD_MCQ = {"question": "김치의 주재료는?", "options": ["배추", "감자", "양파", "당근"], "solution": 1}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_shipped_samples_load_and_are_labelled():
    mcq = load_mcq(MCQ_SAMPLE)
    qa = load_qa(QA_SAMPLE)
    assert len(mcq) >= 10 and all(len(i["options"]) == 4 for i in mcq)
    assert len(qa) >= 8 and sum(i["answers"] == [] for i in qa) == 2
    assert all("not the official benchmark" in i["_sample"] for i in mcq + qa)


def test_json_and_parquet_in_the_same_schema(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([GOOD_MCQ]), encoding="utf-8")
    assert load_mcq(tmp_path / "m.json") == [GOOD_MCQ]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([GOOD_MCQ]), tmp_path / "m.parquet")
    assert load_mcq(tmp_path / "m.parquet") == [GOOD_MCQ]


@pytest.mark.parametrize(
    "row,field",
    [
        ({"options": ["a", "b"], "solution": 1}, "question"),
        ({"question": "q", "solution": 1}, "options"),
        ({"question": "q", "options": ["only one"], "solution": 1}, "options"),
        ({"question": "q", "options": "a,b,c", "solution": 1}, "options"),
        ({"question": "q", "options": ["a", 2], "solution": 1}, "options"),
        ({"question": "q", "options": ["a", "b"]}, "solution"),
        ({"question": "q", "options": ["a", "b"], "solution": 0}, "solution"),  # 1-indexed
        ({"question": "q", "options": ["a", "b"], "solution": 3}, "solution"),
        ({"question": "q", "options": ["a", "b"], "solution": "1"}, "solution"),
    ],
)
def test_bad_mcq_row_names_file_line_and_field(tmp_path, row, field):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_MCQ, row])
    with pytest.raises(BenchmarkSchemaError) as info:
        load_mcq(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: {field}:") and "\n" not in message
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_bad_qa_rows(tmp_path):
    good = {"context": "c", "question": "q", "answers": ["a"]}
    path = _write_jsonl(tmp_path / "qa.jsonl", [good, good, {"context": "c", "question": "q"}])
    with pytest.raises(BenchmarkSchemaError, match=r"qa\.jsonl:3: answers: missing"):
        load_qa(path)
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"context": "c", "question": "q", "answers": "a"}])
    with pytest.raises(BenchmarkSchemaError, match=r"qa\.jsonl:1: answers: expected a list of strings"):
        load_qa(path)


def test_broken_json_line_and_unknown_format(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_MCQ) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(BenchmarkSchemaError, match=r"broken\.jsonl:2: not valid JSON"):
        load_mcq(path)
    (tmp_path / "m.csv").write_text("question\n", encoding="utf-8")
    with pytest.raises(BenchmarkSourceError, match=r"unknown benchmark format \.csv"):
        load_mcq(tmp_path / "m.csv")
    with pytest.raises(BenchmarkSourceError, match="no such file"):
        load_mcq(tmp_path / "missing.jsonl")


def test_hf_id_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchmarkSourceError) as info:
        load_mcq("LGAI-EXAONE/KMMLU-Redux")
    message = str(info.value)
    assert "unreachable" in message and "local" in message and "same schema" in message
    assert "\n" not in message and isinstance(info.value, UserError)
