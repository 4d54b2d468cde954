"""Judge results made readable: per-candidate summaries, a markdown report, PNG charts.

Single mode: turn-1 / turn-2 / overall means and a per-category table per candidate, with the
unparseable, failed and penalised counts beside them (a mean over fewer judgments than asked
must say so). Pairwise mode: wins / losses / ties and the win rate, per category too.
"""
from __future__ import annotations

import io

REPLAY_WARNING = ("**Replayed judge**: the ratings come from a ReplayServer (deterministic, hash-derived), "
                  "not a judge model; a real judge cannot run on this machine. They measure nothing.")


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize_single(records: list[dict], candidate_ids: list[str]) -> dict[str, dict]:
    """Per candidate: turn_1, turn_2, overall means, counts per status, per-category means."""
    out = {}
    for cid in candidate_ids:
        mine = [r for r in records if r["candidate"] == cid]
        ok = [r for r in mine if r["status"] == "ok"]
        cats = {}
        for cat in sorted({r["category"] for r in mine}):
            in_cat = [r for r in ok if r["category"] == cat]
            cats[cat] = {"turn_1": _mean([r["score"] for r in in_cat if r["turn"] == 1]),
                         "turn_2": _mean([r["score"] for r in in_cat if r["turn"] == 2]),
                         "overall": _mean([r["score"] for r in in_cat]), "n": len(in_cat)}
        out[cid] = {
            "turn_1": _mean([r["score"] for r in ok if r["turn"] == 1]),
            "turn_2": _mean([r["score"] for r in ok if r["turn"] == 2]),
            "overall": _mean([r["score"] for r in ok]),
            "n_judgments": len(mine), "n_scored": len(ok),
            "n_unparseable": sum(r["status"] == "unparseable" for r in mine),
            "n_judge_failed": sum(r["status"] == "judge_failed" for r in mine),
            "n_no_answer": sum(r["status"] == "no_answer" for r in mine),
            "n_penalized": sum(bool(r.get("penalized")) for r in ok),
            "categories": cats,
        }
    return out


def summarize_pairwise(records: list[dict], candidate_ids: list[str]) -> dict[str, dict]:
    """Per candidate: wins, losses, ties (inconsistent orders included), unparseable and failed
    counts, and win_rate = (wins + ties/2) / decided, per category too."""
    out = {}
    for cid in candidate_ids:
        mine = [r for r in records if cid in (r["a"], r["b"])]
        decided = [r for r in mine if r["status"] in ("ok", "inconsistent")]

        def tally(rows: list[dict]) -> dict:
            wins = sum(r["winner"] == cid for r in rows)
            ties = sum(r["winner"] == "tie" for r in rows)
            losses = len(rows) - wins - ties
            rate = round((wins + ties / 2) / len(rows), 4) if rows else None
            return {"wins": wins, "losses": losses, "ties": ties, "win_rate": rate}

        out[cid] = {**tally(decided), "n_judgments": len(mine),
                    "n_inconsistent": sum(r["status"] == "inconsistent" for r in mine),
                    "n_unparseable": sum(r["status"] == "unparseable" for r in mine),
                    "n_judge_failed": sum(r["status"] == "judge_failed" for r in mine),
                    "n_no_answer": sum(r["status"] == "no_answer" for r in mine),
                    "categories": {cat: tally([r for r in decided if r["category"] == cat])
                                   for cat in sorted({r["category"] for r in mine})}}
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_report(summary: dict[str, dict], *, mode: str, name: str, questions_path: str, n_questions: int,
                    judge_model: str, replayed: bool, language_penalty: bool, charts: dict[str, str],
                    cost_line: str = "") -> str:
    """The report: a comparison table, then one section per candidate with its chart; `cost_line`
    (the job's, when it runs as one) last."""
    lines = [f"# Judge report: {name}", "",
             f"- mode: {mode}; questions: {questions_path} ({n_questions}); judge: {judge_model}",
             f"- KoMT non-Korean penalty (score -> sqrt(score)): {'on' if language_penalty else 'off'}", ""]
    if replayed:
        lines += [REPLAY_WARNING, ""]
    if "comparison" in charts:
        lines += [f"![comparison]({charts['comparison']})", ""]
    if mode == "single":
        lines += ["| candidate | turn 1 | turn 2 | overall | scored | unparseable | judge failed | no answer | penalised |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for cid, s in summary.items():
            lines.append(f"| {cid} | {_fmt(s['turn_1'])} | {_fmt(s['turn_2'])} | {_fmt(s['overall'])} | "
                         f"{s['n_scored']}/{s['n_judgments']} | {s['n_unparseable']} | {s['n_judge_failed']} | "
                         f"{s['n_no_answer']} | {s['n_penalized']} |")
    else:
        lines += ["| candidate | win rate | wins | losses | ties | inconsistent (tie) | unparseable | judge failed |",
                  "|---|---|---|---|---|---|---|---|"]
        for cid, s in summary.items():
            lines.append(f"| {cid} | {_fmt(s['win_rate'])} | {s['wins']} | {s['losses']} | {s['ties']} | "
                         f"{s['n_inconsistent']} | {s['n_unparseable']} | {s['n_judge_failed']} |")
    for cid, s in summary.items():
        lines += ["", f"## {cid}", ""]
        if cid in charts:
            lines += [f"![{cid}]({charts[cid]})", ""]
        if mode == "single":
            lines += ["| category | turn 1 | turn 2 | overall | n |", "|---|---|---|---|---|"]
            lines += [f"| {cat} | {_fmt(c['turn_1'])} | {_fmt(c['turn_2'])} | {_fmt(c['overall'])} | {c['n']} |"
                      for cat, c in s["categories"].items()]
        else:
            lines += ["| category | win rate | wins | losses | ties |", "|---|---|---|---|---|"]
            lines += [f"| {cat} | {_fmt(c['win_rate'])} | {c['wins']} | {c['losses']} | {c['ties']} |"
                      for cat, c in s["categories"].items()]
        if s["n_unparseable"]:
            lines.append(f"\n{s['n_unparseable']} judgment(s) had no parseable rating: left out of the means, "
                         "listed in judgments.json with status 'unparseable'.")
    if cost_line:
        lines += ["", cost_line]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def candidate_chart(cid: str, s: dict, mode: str, replayed: bool) -> bytes:
    """Per-category bars for one candidate: turn-1/turn-2 means (single) or win rate (pairwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(s["categories"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cats) + 2), 3.6))
    xs = range(len(cats))
    if mode == "single":
        for offset, key in ((-0.2, "turn_1"), (0.2, "turn_2")):
            ax.bar([x + offset for x in xs], [s["categories"][c][key] or 0 for c in cats], width=0.4,
                   label=key.replace("_", " "))
        ax.set_ylim(0, 10)
        ax.set_ylabel("mean score (1-10)")
        ax.legend(loc="upper right", fontsize=8)
        title = f"{cid}: overall {_fmt(s['overall'])}, unparseable {s['n_unparseable']}"
    else:
        ax.bar(list(xs), [s["categories"][c]["win_rate"] or 0 for c in cats])
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate (ties count half)")
        title = f"{cid}: win rate {_fmt(s['win_rate'])}"
    ax.set_xticks(list(xs))
    ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    ax.set_title(title + (" [replayed judge]" if replayed else ""), fontsize=10)
    return _png(fig)


def comparison_chart(summary: dict[str, dict], mode: str, replayed: bool) -> bytes:
    """All candidates side by side: turn-1/turn-2/overall means (single) or win rates (pairwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(summary)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(ids) + 2), 3.6))
    xs = range(len(ids))
    if mode == "single":
        for offset, key in ((-0.27, "turn_1"), (0.0, "turn_2"), (0.27, "overall")):
            ax.bar([x + offset for x in xs], [summary[c][key] or 0 for c in ids], width=0.27, label=key.replace("_", " "))
        ax.set_ylim(0, 10)
        ax.set_ylabel("mean score (1-10)")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.bar(list(xs), [summary[c]["win_rate"] or 0 for c in ids])
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate (ties count half)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(ids, rotation=20, ha="right", fontsize=8)
    ax.set_title("candidates" + (" [replayed judge]" if replayed else ""), fontsize=10)
    return _png(fig)
