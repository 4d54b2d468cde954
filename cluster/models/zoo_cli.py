"""`yard zoo build [CONFIG] [key.sub=value ...]`, `yard zoo list [--zoo-dir DIR]` and
`yard zoo shape NAME [--out DIR]` (a random-weight model of a real shape, cluster.models.shapes).

    yard zoo build                                   # configs/zoo.demo.yaml
    yard zoo build configs/zoo.demo.yaml zoo_dir=/tmp/zoo seed=7   # overrides: key.sub=value
    yard zoo list --zoo-dir /tmp/zoo
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from cluster.console import console as make_console
from rich.table import Table

from cluster.config import ConfigError, load_config


def _setup_logging() -> None:
    # Leave logging alone when `yard` (or a test harness) already configured it.
    root = logging.getLogger()
    if root.handlers:
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "architecture", "params", "parent", "derivation", "family"):
        # Ids are what users copy into other configs: never truncate them.
        table.add_column(column, justify="right" if column == "params" else "left",
                         no_wrap=column in ("id", "parent", "family"))
    for row in rows:
        table.add_row(row["id"], row["architecture"], f"{row['params']:,}", row["parent"] or "-",
                      row["derivation"], row["family"])
    return table


def _build(args: argparse.Namespace, console: Console) -> int:
    from cluster.models.zoo import DEMO_CONFIG, ZooConfig, build_zoo

    # The config file is optional: the first argument without `=` names it.
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else str(DEMO_CONFIG)
    cfg = load_config(path, ZooConfig, items)
    build = build_zoo(cfg)
    how = "cache hit, nothing trained" if build.cache_hit else f"built {len(build.built)} models"
    console.print(_table(list_zoo(build.zoo_dir), f"zoo {build.zoo_dir} ({how}, {build.seconds:.1f}s)"))
    console.print(f"registry: {build.registry_path}")
    return 0


def _list(args: argparse.Namespace, console: Console) -> int:
    zoo_dir = args.zoo_dir
    if zoo_dir is None:
        from cluster.models.zoo import default_zoo_config
        zoo_dir = default_zoo_config().zoo_dir
    console.print(_table(list_zoo(zoo_dir), f"zoo {zoo_dir}"))
    return 0


def _shape(args: argparse.Namespace, console: Console) -> int:
    from cluster.models.shapes import build_shape

    spec = build_shape(args.name, args.out, seed=args.seed, device=args.device, model_id=args.id,
                       num_gpus=args.num_gpus)
    console.print(f"{args.id or args.name + '-shape'}: {spec.params_b} B parameters, random weights "
                  f"(speed work only); registry: {args.out}/models.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yard zoo", description="build or list the toy model zoo")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the zoo (a cache hit when nothing changed)")
    build.add_argument("items", nargs="*", metavar="[CONFIG] [key.sub=value ...]",
                       help="zoo config (default configs/zoo.demo.yaml), then overrides")
    listing = sub.add_parser("list", help="table of the zoo's registered models")
    listing.add_argument("--zoo-dir", default=None, help="zoo directory (default: the demo config's zoo_dir)")
    shape = sub.add_parser("shape", help="a random-weight model of a real architecture's shape (speed work)")
    shape.add_argument("name", help="exaone-4.0-1.2b, qwen3-1.7b, qwen3-4b, qwen3-8b, llama-3.1-8b or olmoe-1b-7b")
    shape.add_argument("--out", default=".yard/shapes", help="folder; its models.yaml registers the model")
    shape.add_argument("--id", default=None, help="model id (default NAME-shape)")
    shape.add_argument("--seed", type=int, default=0)
    shape.add_argument("--device", default="auto", help="where the weights are initialised (auto, cpu, cuda)")
    shape.add_argument("--num-gpus", type=int, default=1,
                       help="GPUs the registry entry asks for (2: device_map='auto' on HF, tensor parallel on vLLM)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    _setup_logging()
    console = make_console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep rows unwrapped
        console = Console(width=160)
    try:
        return {"build": _build, "list": _list, "shape": _shape}[args.command](args, console)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


def list_zoo(zoo_dir: str | Path) -> list[dict]:
    """Rows of the zoo's registry: id, architecture, params, parent, derivation, family, path."""
    from cluster.models.zoo import REGISTRY_NAME, read_registry

    zoo_dir = Path(zoo_dir).expanduser()
    if not (zoo_dir / REGISTRY_NAME).is_file():
        raise ConfigError(f"{zoo_dir}: no zoo here ({REGISTRY_NAME} missing; run `yard zoo build`)")
    rows = []
    for mid, spec in read_registry(zoo_dir).items():
        path = Path(spec.source).expanduser()
        rows.append({
            "id": mid,
            "architecture": spec.family,
            "params": round(spec.params_b * 1e9),
            "parent": spec.parent,
            "derivation": spec.derivation,
            "family": spec.lineage_family or mid,
            "path": str(path if path.is_absolute() else (zoo_dir / path).resolve()),
        })
    return rows
