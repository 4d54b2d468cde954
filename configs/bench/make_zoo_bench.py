"""Write the zoo sample benchmarks from the toy zoo's own training corpus (stdlib only, deterministic).

    python configs/bench/make_zoo_bench.py      # rewrites zoo_qa.jsonl and zoo_mcq.jsonl beside this file

Every dialogue `U: question / A: answer` of `cluster/zoo_corpus/<topic>.txt` (English and Korean)
becomes one item of each file, with `category` = the topic:

- `zoo_qa.jsonl` (Ko-LongRAG schema): `question` = the U: line, `answers` = [the whole A: text].
  The toy models reproduce their answers word for word, so token F1 against the whole answer reads
  how much of it a model still knows (a first-sentence gold would punish the rest of a correct
  reply). `context` = a paragraph on the same topic in the same language from the corpus: it does
  not hold the answer, the models answer from memory. Two extra items are unanswerable
  (`answers: []`): the gold reply is an abstention.
- `zoo_mcq.jsonl` (KMMLU schema): `options` = the true answer and 3 answers of other dialogues of
  the same topic and language, shuffled with a fixed seed; `solution` is 1-indexed.

A model that memorized a topic scores well on it and near chance (MCQ) or near zero (QA) elsewhere;
a damaged (pruned) copy scores lower on its own topics.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "cluster" / "zoo_corpus"
SAMPLE = "written for modelyard tests/demos; not the official benchmark"
SEED = 0
N_OPTIONS = 4
_HANGUL = re.compile("[\uac00-\ud7a3]")

# (topic, language, question): nothing in the corpus answers them.
UNANSWERABLE = [
    ("culture", "en", "How many people visited the national museum on its opening day?"),
    ("health", "ko", "이 글을 쓴 의사의 이름은 무엇인가요?"),
]


def _language(text: str) -> str:
    return "ko" if _HANGUL.search(text) else "en"


def read_topic(topic: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(question, answer) pairs and plain paragraphs of one corpus file, in file order (the block
    format of cluster/zoo_train.py: blank-line separated; a chat block has only `U: `/`A: ` lines)."""
    dialogues, paragraphs = [], []
    for block in (CORPUS / f"{topic}.txt").read_text(encoding="utf-8").split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.startswith(("U: ", "A: ")) for ln in lines):
            turns = [ln[3:].strip() for ln in lines]
            dialogues.append((turns[0], turns[1]))  # every corpus chat is one question, one answer
        else:
            paragraphs.append(" ".join(lines))
    return dialogues, paragraphs


def _context(paragraphs: list[str], language: str, index: int) -> str:
    same = [p for p in paragraphs if _language(p) == language] or paragraphs
    return same[index % len(same)]


def build() -> tuple[list[dict], list[dict]]:
    """(qa rows, mcq rows) for every topic of the corpus, sorted by topic."""
    rng = random.Random(SEED)
    qa, mcq = [], []
    for topic in sorted(p.stem for p in CORPUS.glob("*.txt")):
        dialogues, paragraphs = read_topic(topic)
        for index, (question, answer) in enumerate(dialogues):
            language = _language(question)
            qa.append({"_sample": SAMPLE, "category": topic, "language": language,
                       "context": _context(paragraphs, language, index), "question": question,
                       "answers": [answer]})
            others = [a for q, a in dialogues if _language(q) == language and a != answer]
            options = [answer] + rng.sample(others, N_OPTIONS - 1)
            rng.shuffle(options)
            mcq.append({"_sample": SAMPLE, "category": topic, "language": language, "question": question,
                        "options": options, "solution": options.index(answer) + 1})
        for u_topic, language, question in UNANSWERABLE:
            if u_topic == topic:
                qa.append({"_sample": SAMPLE, "category": topic, "language": language,
                           "context": _context(paragraphs, language, 0), "question": question, "answers": []})
    return qa, mcq


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    qa, mcq = build()
    _write(HERE / "zoo_qa.jsonl", qa)
    _write(HERE / "zoo_mcq.jsonl", mcq)
    print(f"wrote {len(qa)} QA and {len(mcq)} MCQ items to {HERE}")


if __name__ == "__main__":
    main()
