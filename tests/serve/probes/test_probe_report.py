"""The probe report: personas grouped side by side, 0 told apart from n/a, files written."""
from serve.probes.probe_report import file_stem, write_report
from serve.probes.probe_suite import ProbeSuite
from serve.probes.probes import grade, summarize

SUITE = ProbeSuite.model_validate({
    "kind": "persona_probes", "name": "mini",
    "persona": {"name": "Seoyun", "system_prompt": "You are Seoyun.",
                "facts": [{"key": "city", "question": "Where do you live?", "expected": ["Jeonju"]}]},
    "probes": [{"id": "city-2", "group": "fact", "fact": "city", "turns": ["Which city is your café in?"]}],
})


def _candidate(cid: str, group: str, variant: str, replies: dict) -> tuple[dict, list[dict]]:
    records = []
    for probe in SUITE.all_probes():
        for cond, text in replies.items():
            conv = {"probe": probe.id, "group": probe.group, "condition": cond,
                    "messages": [{"role": "user", "content": probe.turns[0]}, {"role": "assistant", "content": text}],
                    "replies": [text]}
            records.append({"candidate": cid, **grade(conv, SUITE.expected_for(probe))})
    conds = {c: summarize(records, SUITE, c, judged=False) for c in replies}
    head = {"id": cid, "model": cid, "base_url": "http://127.0.0.1:1/v1", "group": group, "variant": variant, "error": None}
    return {**head, "conditions": conds}, records


def test_report_groups_variants_side_by_side(tmp_path):
    base, r1 = _candidate("p-base", "seoyun", "base", {"with_system": "Jeonju!", "without_system": "As an AI, nowhere."})
    other, r2 = _candidate("z", "zoo", "base", {"with_system": "Seoul", "without_system": "Seoul"})
    quant, r3 = _candidate("p-sft:w4", "seoyun", "sft+W4A16", {"with_system": "Jeonju", "without_system": "Jeonju"})
    summary = {"suite": "mini", "persona": "Seoyun", "conditions": ["with_system", "without_system"], "judge": None,
               "status": "ok", "candidates": [base, other, quant]}
    paths = write_report(summary, r1 + r2 + r3, SUITE, tmp_path)
    assert set(paths) == {"report", "comparison", "p-base.md", "p-base.png", "z.md", "z.png", "p-sft_w4.md", "p-sft_w4.png"}
    report = paths["report"].read_text()
    rows = [line for line in report.splitlines() if line.startswith("| seoyun") or line.startswith("| zoo")]
    # one persona's variants are adjacent whatever the config order
    assert [r.split(" | ")[1] for r in rows] == ["base", "sft+W4A16", "base"]
    assert "| 100% / 0% | – / – |" in rows[0]
    page = paths["p-base.md"].read_text()
    assert "| city | Jeonju | consistent (2/2) | wrong (0/2) |" in page
    assert "`claims_ai` claims to be an AI" in page
    assert all(paths[k].read_bytes()[:4] == b"\x89PNG" for k in ("comparison", "p-base.png", "p-sft_w4.png"))


def test_failed_candidate_page(tmp_path):
    failed = {"id": "gone", "model": "gone", "base_url": "http://127.0.0.1:1/v1", "group": "", "variant": "",
              "error": "POST ...: HTTP 404: no such model", "conditions": {}}
    summary = {"suite": "mini", "persona": "Seoyun", "conditions": ["without_system"], "judge": "j",
               "status": "failed", "candidates": [failed]}
    paths = write_report(summary, [], SUITE, tmp_path)
    assert "**Failed**: POST ...: HTTP 404: no such model" in paths["gone.md"].read_text()
    assert "| gone | FAILED: POST ...: HTTP 404: no such model |" in paths["report"].read_text()
    assert paths["comparison"].read_bytes()[:4] == b"\x89PNG"
    assert file_stem("a/b:c d") == "a_b_c_d"
