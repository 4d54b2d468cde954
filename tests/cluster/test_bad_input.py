"""A corpus of broken inputs (config files, overrides, data files) through `yard` itself: every
case exits 2 with one line on stderr naming the file (or the command-line override) and the field,
before Ray starts or a zoo is built. Request bodies are in tests/serve/test_app.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster.cli import main as yard

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
BINARY = b"kind: chat\nprompt: \xff\xfe\x00\x81 not text\n"
BOMB = "kind: chat\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7))


class Case:
    """argv (with {tmp}, {zoo} and {files}), files to write first, and what the line must name."""

    def __init__(self, name, argv, *names, files=None):
        self.name, self.argv, self.names, self.files = name, argv, names, files or {}


def _data(cfg: str, **changes) -> str:
    """A demo config with top-level `changes` applied, as YAML text."""
    data = yaml.safe_load((CONFIGS / cfg).read_text())
    data.update(changes)
    return yaml.safe_dump(data, allow_unicode=True)


ZOO = ["zoo=null", "registry=[{zoo}]", "storage.uri={tmp}/store"]
CHAT = ["chat", str(CONFIGS / "chat.demo.yaml"), *ZOO]
DNA = ["dna", str(CONFIGS / "dna.demo.yaml"), *ZOO]
SWEEP = ["sweep", str(CONFIGS / "sweep.demo.yaml"), *ZOO]
PERSONA = ["persona", str(CONFIGS / "persona.demo.yaml"), *ZOO]
SERVE = ["serve", str(CONFIGS / "serve.demo.yaml"), *ZOO]
JUDGE = ["judge", str(CONFIGS / "judge.demo.yaml"), "storage.uri={tmp}/store"]
PROBE = ["probe", str(CONFIGS / "probe.demo.yaml"), "storage.uri={tmp}/store"]

CASES = [
    # config files: what any job reads first
    Case("binary config", ["chat", "{tmp}/bin.yaml"], "bin.yaml", "not UTF-8", files={"bin.yaml": BINARY}),
    Case("binary config checked", ["config", "check", "{tmp}/bin.yaml"], "bin.yaml", "not UTF-8",
         files={"bin.yaml": BINARY}),
    Case("not YAML", ["chat", "{tmp}/x.yaml"], "x.yaml", "not valid YAML", files={"x.yaml": "kind: chat\nprompt: [unclosed\n"}),
    Case("a list at the top", ["chat", "{tmp}/x.yaml"], "x.yaml", "mapping", files={"x.yaml": "- kind: chat\n"}),
    Case("empty file", ["chat", "{tmp}/x.yaml"], "x.yaml", "mapping", files={"x.yaml": ""}),
    Case("no kind", ["config", "check", "{tmp}/x.yaml"], "x.yaml", "kind", files={"x.yaml": "prompt: hi\n"}),
    Case("unknown kind", ["config", "check", "{tmp}/x.yaml"], "x.yaml", "kind", files={"x.yaml": "kind: chatt\n"}),
    Case("wrong kind for the job", ["chat", str(CONFIGS / "dna.demo.yaml")], "dna.demo.yaml", "kind"),
    Case("alias bomb", ["chat", "{tmp}/x.yaml"], "x.yaml", "alias", files={"x.yaml": BOMB}),
    Case("alias cycle", ["config", "check", "{tmp}/x.yaml"], "x.yaml", "cycle",
         files={"x.yaml": "kind: chat\nx: &x [1, *x]\n"}),
    Case("no such config", ["chat", "{tmp}/missing.yaml"], "missing.yaml", "no such"),
    Case("a directory as config", ["chat", "{tmp}"], "{tmp}", "cannot read"),
    Case("unknown field", ["chat", "{tmp}/x.yaml"], "x.yaml", "promt", files={"x.yaml": "kind: chat\npromt: hi\n"}),
    Case("wrong type", ["chat", "{tmp}/x.yaml"], "x.yaml", "max_new_tokens",
         files={"x.yaml": "kind: chat\nmax_new_tokens: many\n"}),
    Case("out of range", ["chat", "{tmp}/x.yaml"], "x.yaml", "max_new_tokens",
         files={"x.yaml": "kind: chat\nmax_new_tokens: 0\n"}),
    Case("huge config", ["chat", "{tmp}/x.yaml"], "x.yaml", "at most",
         files={"x.yaml": "kind: chat\nprompt: " + "a" * 1_100_000 + "\n"}),
    # overrides on the command line
    Case("override without =", [*CHAT, "workers"], "override 'workers'", "key.sub=value"),
    Case("non-ASCII key", [*CHAT, "wörkers=2"], "chat.demo.yaml", "wörkers"),
    Case("override index past the list", [*CHAT, "registry.5=x"], "override 'registry.5=x'", "index"),
    Case("override into a scalar", [*CHAT, "prompt.x=1"], "override 'prompt.x=1'", "prompt"),
    Case("override bad value", [*CHAT, "workers=-1"], "chat.demo.yaml", "workers"),
    # model ids: checked against the registry before Ray starts
    Case("chat: unknown model", [*CHAT, "models=[nope]"], "'nope'", "unknown model id"),
    Case("dna: unknown model", [*DNA, "models=[llama-a, nope]"], "dna.demo.yaml", "models.1", "'nope'"),
    Case("dna: no probe file", [*DNA, "probes.file={tmp}/none.yaml"], "none.yaml", "no such"),
    Case("dna: binary probe file", [*DNA, "probes.file={tmp}/p.yaml"], "p.yaml", "probe",
         files={"p.yaml": BINARY}),
    Case("dna: vLLM on a CPU machine", [*DNA, "engine=vllm"], "dna.demo.yaml", "engine"),
    Case("dna: fraction out of range", [*DNA, "gates.min_valid_fraction=2"], "dna.demo.yaml",
         "gates.min_valid_fraction"),
    Case("sweep: unknown base", [*SWEEP, "base=nope"], "'nope'", "unknown model id"),
    Case("sweep: prune past the layers", [*SWEEP, "search.space.prune_depth={{grid: [1, 6]}}"],
         "search.space.prune_depth", "6"),
    Case("sweep: unknown quantization", [*SWEEP, "search.space.quant={{value: INT3}}"], "quant", "INT3"),
    Case("sweep: no calibration file", [*SWEEP, "calibration.source={tmp}/none.txt"], "calibration.source",
         "none.txt"),
    Case("sweep: binary calibration file", [*SWEEP, "calibration.source={tmp}/c.txt"], "c.txt", "not UTF-8",
         files={"c.txt": b"\xff\xfe" * 100}),
    Case("sweep: benchmark rows of the wrong schema", [*SWEEP, "eval.benchmarks=[{{name: b, task: mcq, source: {tmp}/b.jsonl}}]"],
         "b.jsonl:1", "solution", files={"b.jsonl": json.dumps({"question": "q", "options": ["a", "b"], "answer": 1}) + "\n"}),
    Case("sweep: binary benchmark file", [*SWEEP, "eval.benchmarks=[{{name: b, task: mcq, source: {tmp}/b.jsonl}}]"],
         "b.jsonl", "not UTF-8", files={"b.jsonl": BINARY}),
    Case("sweep: vLLM evaluation on a CPU machine", [*SWEEP, "eval.engine=vllm", "eval.benchmarks=[{{name: q, task: "
         "qa, source: {tmp}/q.jsonl}}]"], "eval.engine", "vllm", files={"q.jsonl": json.dumps(
             {"context": "c", "question": "q", "answers": ["a"]}) + "\n"}),
    Case("sweep: loglikelihood benchmark with vLLM", [*SWEEP, "eval.engine=vllm"], "zoo_mcq", "loglikelihood needs "
         "engine hf"),
    Case("persona: unknown base", [*PERSONA, "base=nope"], "'nope'", "unknown model id"),
    Case("persona: no data dir", [*PERSONA, "prep.data_dir={tmp}/none"], "prep.data_dir", "none"),
    Case("persona: LoRA rank 0", [*PERSONA, "lora.r=0"], "persona.demo.yaml", "lora.r"),
    Case("persona: no probe suite", [*PERSONA, "probe.suite={tmp}/none.yaml"], "none.yaml", "no such"),
    Case("serve: unknown candidate model", [*SERVE, "candidates.0.model=nope"], "serve.demo.yaml",
         "candidates.0.model", "'nope'"),
    Case("serve: public host without a key", [*SERVE, "host=0.0.0.0"], "host", "api_key"),
    Case("serve: negative port", [*SERVE, "port=-1"], "serve.demo.yaml", "port"),
    Case("serve: vLLM candidate on a CPU machine", [*SERVE, "candidates.0.engine=vllm"], "serve.demo.yaml",
         "candidates.0.engine", "vllm"),
    Case("judge: no questions file", [*JUDGE, "questions={tmp}/none.jsonl"], "none.jsonl", "no such"),
    Case("judge: binary questions", [*JUDGE, "questions={tmp}/q.jsonl"], "q.jsonl", "not UTF-8",
         files={"q.jsonl": BINARY}),
    Case("judge: malformed question row", [*JUDGE, "questions={tmp}/q.jsonl"], "q.jsonl: line 1", "JSON",
         files={"q.jsonl": "{not json\n"}),
    Case("judge: unknown mode", [*JUDGE, "mode=triple"], "judge.demo.yaml", "mode"),
    Case("probe: no suite", [*PROBE, "suite={tmp}/none.yaml"], "none.yaml", "no such"),
    Case("probe: binary suite", [*PROBE, "suite={tmp}/s.yaml"], "s.yaml", "not UTF-8", files={"s.yaml": BINARY}),
    Case("zoo: negative steps", ["zoo", "build", str(CONFIGS / "zoo.demo.yaml"), "bases.0.steps=-5",
                                 "zoo_dir={tmp}/zoo"], "zoo.demo.yaml", "bases.0.steps"),
]


@pytest.fixture
def no_work(monkeypatch, no_ray):
    """Ray never starts (conftest's no_ray) and no zoo is built: a bad input is refused before any work."""
    import cluster.models.zoo

    monkeypatch.setattr(cluster.models.zoo, "build_zoo", no_ray)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, zoo, tmp_path, capsys, no_work):
    for name, content in case.files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    fill = {"tmp": str(tmp_path), "zoo": str(zoo.registry_path)}
    code = yard([a.format(**fill) for a in case.argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1, err
    assert len(err[0]) < 400, err[0]
    for name in case.names:
        assert name.format(**fill) in err[0], err[0]


def test_the_corpus_is_at_least_40_cases():
    assert len(CASES) >= 40
