"""tune/compress/calibration.py: calibration texts from a .txt / .jsonl file or the zoo corpus, shuffled with
a fixed seed and cut to count + holdout; one-line errors naming calibration.*."""
import json

import pytest

from cluster.config import ConfigError
from cluster.models.zoo_train import corpus_topics  # imported here: the zoo module takes seconds to import
from tune.compress.calibration import load_items, render, split
from tune.config import CalibrationConfig


def cal(source, count=3, holdout=1) -> CalibrationConfig:
    return CalibrationConfig(source=str(source), count=count, holdout=holdout)


def test_a_txt_file_gives_blank_line_separated_blocks_with_whitespace_folded(tmp_path):
    path = tmp_path / "cal.txt"
    path.write_text("one\n  two\n\n\nthree\n\n   \n\nfour five\n", encoding="utf-8")
    items = load_items(cal(path, count=2, holdout=1))
    assert sorted(items) == ["four five", "one two", "three"]


def test_the_shuffle_is_fixed_and_the_cut_is_count_plus_holdout(tmp_path):
    path = tmp_path / "cal.txt"
    path.write_text("\n\n".join(f"text {i}" for i in range(20)), encoding="utf-8")
    first = load_items(cal(path, count=5, holdout=2))
    assert first == load_items(cal(path, count=5, holdout=2)) and len(first) == 7
    assert first != [f"text {i}" for i in range(7)]  # shuffled, so topics mix
    texts, held = split(first, cal(path, count=5, holdout=2))
    assert texts == first[:5] and held == first[5:]


def test_a_jsonl_file_takes_text_or_chat_messages(tmp_path):
    path = tmp_path / "cal.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path.write_text("\n".join(json.dumps(r) for r in ({"text": "a"}, {"messages": chat}, {"text": "  "}, {"text": "b"})),
                    encoding="utf-8")
    items = load_items(cal(path, count=2, holdout=1))  # the blank text is dropped
    assert sorted(map(str, items)) == sorted(map(str, ["a", "b", chat]))


def test_the_source_resolves_against_the_config_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cal.txt").write_text("a\n\nb\n\nc\n\nd", encoding="utf-8")
    items = load_items(cal("data/cal.txt"), config_path=tmp_path / "sweep.yaml")
    assert sorted(items) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("name, text, match", [
    ("cal.csv", "a,b", r"calibration.source: .*cal.csv: unsupported file type \(allowed: .txt, .jsonl, zoo:<topics>\)"),
    ("cal.jsonl", '{"text": "a"}\n{"prompt": "b"}', r"cal.jsonl:2: text: expected a `text` string or a `messages`"),
    ("cal.jsonl", '{"text": "a"}\nnot json', r"cal.jsonl:2: not valid JSON"),
    ("cal.txt", "\n\n  \n", r"calibration.source: .*cal.txt: empty calibration set"),
    ("cal.txt", "a\n\nb", r"calibration.count: .*cal.txt has 2 texts; count 3 \+ holdout 1 = 4 needed"),
])
def test_bad_sources_are_one_line(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as e:
        load_items(cal(path))
    assert "\n" not in str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"calibration.source: .*nope.txt: no such file"):
        load_items(cal(tmp_path / "nope.txt"))


def test_unknown_zoo_topics_list_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_items(CalibrationConfig(source="zoo:weather,cooking"))
    assert str(e.value) == (f"calibration.source: zoo:weather,cooking: unknown topic(s) ['cooking'] "
                            f"(allowed: {', '.join(corpus_topics())})")
    with pytest.raises(ConfigError, match=r"unknown topic\(s\) \(none given\)"):
        load_items(CalibrationConfig(source="zoo:"))


def test_render_keeps_strings_and_renders_chats_with_the_template():
    class Tok:
        def apply_chat_template(self, messages, tokenize):
            assert tokenize is False
            return "<chat>" + "/".join(m["content"] for m in messages)

    assert render(["plain", [{"role": "user", "content": "hi"}]], Tok()) == ["plain", "<chat>hi"]
