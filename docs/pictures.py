"""README's pictures, made from what a demo store holds (`make pictures`, after `make demo`).

    python docs/pictures.py [--store .yard] [--out docs/img]

Writes, each small enough to commit:
- dna-heatmap.png: the latest DNA report's distance heatmap (`yard dna`);
- sweep-pareto.png: the latest sweep's Pareto plot (`yard sweep`);
- cost.png: `yard cost`'s spend chart over every job of the store;
- status.svg: `yard status` as the terminal shows it (rich's own SVG export of the same table);
- experiment.svg: the demo experiment's results table (`yard run`).
The probe console's screenshot comes from its browser test (`make pictures` runs it with
YARD_TEST_ARTIFACTS pointing here). Exit 2 when the store holds no demo run to draw from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MAX_WIDTH_PX = 900


def _latest_file(store, kind: str, filename: str) -> str | None:
    """The newest complete run of any name of `kind` that holds `filename`."""
    best = None
    for name in store.model_ids(kind):
        for run in store.runs(kind, name):
            if run.ok and filename in run.marker.get("files", []) and (best is None or run.name > best.name):
                best = run
    return f"{best.prefix}/{filename}" if best else None


def _shrink(data: bytes, path: Path) -> Path:
    """A PNG no wider than MAX_WIDTH_PX, optimised."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if image.width > MAX_WIDTH_PX:
        image = image.resize((MAX_WIDTH_PX, round(image.height * MAX_WIDTH_PX / image.width)), Image.LANCZOS)
    # a plot has few colours: a 128-colour palette keeps it sharp at a third of the bytes
    image.convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def _svg(renderable, path: Path, title: str, width: int = 150) -> Path:
    from rich.console import Console

    console = Console(record=True, width=width, file=open("/dev/null", "w"), force_terminal=True)
    console.print(renderable)
    path.write_text(console.export_svg(title=title))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=".yard")
    parser.add_argument("--out", default=str(REPO / "docs" / "img"))
    args = parser.parse_args(argv)
    from cluster.store.storage import open_store

    store = open_store(args.store)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, filename, name in (("reports", "heatmap.png", "dna-heatmap.png"), ("sweep", "pareto.png", "sweep-pareto.png")):
        key = _latest_file(store, kind, filename)
        if key is None:
            print(f"pictures: no {kind} run with {filename} in {store.uri}: run `make demo` first", file=sys.stderr)
            return 2
        written.append(_shrink(store.get_bytes(key), out / name))

    import tempfile

    from cluster.capacity.cost import read_jobs
    from cluster.capacity.cost_report import spend_png
    from cluster.capacity.prices import load_prices

    with tempfile.TemporaryDirectory() as tmp:
        png = spend_png(read_jobs(store, None), load_prices(None), Path(tmp) / "cost.png")
        written.append(_shrink(png.read_bytes(), out / "cost.png"))

    from cluster.ops.status import collect, render_table

    statuses = [j for j in collect(store) if j.job_name in ("chat", "bankroll-demo", "dna")][:3]
    written.append(_svg(render_table(statuses), out / "status.svg", "yard status"))

    # the newest results table of any experiment: experiments/<name>/results/<run>/results.jsonl
    rows_key = next((k for k in sorted(store.list_keys("experiments/"), reverse=True) if k.endswith("/results.jsonl")), None)
    if rows_key:
        import json

        from rich.table import Table

        rows = [json.loads(line) for line in store.get_bytes(rows_key).decode().splitlines()]
        cols = [c for c in rows[0] if c not in ("run", "reason", "device")]
        table = Table(title=f"yard run: {rows_key.split('/')[1]}")
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
        written.append(_svg(table, out / "experiment.svg", "yard run"))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
