"""Lineage recovery across zoo seeds: does `yard dna` place every model next to its own family on
zoos trained from other seeds (as another machine's floating point would give)?

For each zoo config and seed: build the zoo (cached under --cache), run the DNA job with the demo
DNA config on it (kept under --store, so a rerun only analyses), then print per seed the
nearest-family accuracy and the same- vs cross-family pair AUROC, and mean / min / max over seeds,
beside the same figures on the same answers with what the project used before (llm-dna's
defaults, dna_dim 128 and pre_agg_embed_dim 64, and plain cosine distance).
It also prints, per child, how far it was trained (relative L2 change of its weights from its
parent's) beside how far its DNA sits from its parent's.

    python tests/bench/bench_lineage.py                                   # demo + shared-data zoos, seeds 0-4
    python tests/bench/bench_lineage.py --zoo configs/zoo.demo.yaml --seeds 0 1

Not a timed assertion: a table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def weight_delta(child_dir: Path, parent_dir: Path) -> float:
    """||child - parent|| / ||parent|| over every tensor both checkpoints hold."""
    from safetensors.torch import load_file

    child, parent = load_file(child_dir / "model.safetensors"), load_file(parent_dir / "model.safetensors")
    num = sum(float(((child[k].float() - parent[k].float()) ** 2).sum()) for k in parent if k in child)
    den = sum(float((parent[k].float() ** 2).sum()) for k in parent)
    return (num / den) ** 0.5


def one_zoo(zoo_config: Path, seed: int, cache: Path, store_root: Path, dna_overrides: list[str],
            zoo_overrides: list[str] = (), reuse: bool = False) -> dict:
    from actors import analysis
    from actors.config import DnaConfig
    from actors.dna_job import DEMO_CONFIG, run_dna
    from cluster.config import load_config
    from cluster.models.registry import ModelRegistry
    from cluster.store.storage import open_store
    from cluster.models.zoo import build_zoo
    from cluster.models.zoo_cli import list_zoo
    from cluster.models.zoo import ZooConfig

    name = f"{zoo_config.stem}-s{seed}"
    zoo_cfg = load_config(zoo_config, ZooConfig, [f"seed={seed}", f"zoo_dir={cache / name}", *zoo_overrides])
    if reuse and (cache / name / "models.yaml").is_file():
        # a zoo built earlier for this config and seed (e.g. with another num_threads): measure it as it is
        build = SimpleNamespace(registry_path=cache / name / "models.yaml", zoo_dir=cache / name)
    else:
        build = build_zoo(zoo_cfg)
    store_uri = str(store_root / name)
    cfg = load_config(DEMO_CONFIG, DnaConfig, ["zoo=null", f"registry=[{build.registry_path}]",
                                                f"storage.uri={store_uri}", *dna_overrides])
    store = open_store(store_uri)
    registry = ModelRegistry.load([str(build.registry_path)])
    ids = registry.ids()
    if any(store.latest("dna", m, prefer=(".npy",)) is None for m in ids):
        run_dna(cfg, accept_suspicious=True)
    fps, missing = analysis.load_latest(store, ids)
    if missing:
        raise RuntimeError(f"{name}: no DNA for {missing}")
    ids, D = analysis.lineage_distances(fps, cfg.analysis)
    families = {m: registry.family_of(m) for m in ids}
    acc, _ = analysis.nearest_family_accuracy(ids, D, families)
    auroc = analysis.family_pair_auroc(ids, D, families)
    before = llm_dna_defaults(store, ids, families, cfg)
    paths = {row["id"]: Path(row["path"]) for row in list_zoo(build.zoo_dir)}
    children = []
    for m in ids:
        parent = registry.get(m).parent
        if parent in ids:
            children.append({"child": m, "parent": parent, "weight_delta": weight_delta(paths[m], paths[parent]),
                             "dna_distance": float(D[ids.index(m), ids.index(parent)])})
    return {"zoo": zoo_config.stem, "seed": seed, "accuracy": acc, "auroc": auroc, "children": children,
            "before_accuracy": before[0], "before_auroc": before[1]}


_ENCODER = {}


def llm_dna_defaults(store, ids: list[str], families: dict, cfg) -> tuple[float, float]:
    """(accuracy, AUROC) on the same stored answers with what the project used before: llm-dna's
    defaults (dna_dim 128, pre_agg_embed_dim 64) and plain cosine distance."""
    import numpy as np

    from actors import analysis
    from actors.config import AnalysisConfig
    from actors.fingerprint import load_encoder
    from llm_dna.dna.TextDNAExtractor import TextDNAExtractor

    if "encoder" not in _ENCODER:
        _ENCODER["encoder"] = load_encoder(cfg.encoder, device="cpu")
    encoder = _ENCODER["encoder"]
    extractor = TextDNAExtractor(dna_dim=128, pre_agg_embed_dim=64, random_seed=cfg.dna.projection_seed,
                                 encoder_name=cfg.encoder.name)
    fps = {}
    for m in ids:
        run = store.latest("dna", m, prefer=(".npy",)).run
        answers = [item["response"] for item in store.get_json(f"{run.prefix}/responses.json")["items"]]
        vector = extractor.extract_dna_from_answers(answers, model_name=m, encoder=encoder).signature
        fps[m] = analysis.Fingerprint(m, np.asarray(vector, dtype=np.float32), {}, run.name, "")
    ids, D = analysis.lineage_distances(fps, AnalysisConfig(distance="cosine"))
    return analysis.nearest_family_accuracy(ids, D, families)[0], analysis.family_pair_auroc(ids, D, families)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", action="append", type=Path, help="zoo config (repeatable)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "modelyard" / "lineage")
    parser.add_argument("--store", type=Path, default=Path.home() / ".cache" / "modelyard" / "lineage-store")
    parser.add_argument("--zoo-set", action="append", default=[], help="zoo config override, e.g. num_threads=1")
    parser.add_argument("--reuse", action="store_true", help="measure zoos already under --cache as they are")
    parser.add_argument("overrides", nargs="*", help="DNA config overrides, e.g. dna.dna_dim=128")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    zoos = args.zoo or [REPO / "configs" / "zoo.demo.yaml", REPO / "configs" / "zoo.shared-data.yaml"]
    results = [one_zoo(z, s, args.cache, args.store, args.overrides, args.zoo_set, args.reuse)
               for z in zoos for s in args.seeds]
    print("| zoo | seed | nearest-family accuracy | family-pair AUROC | before: accuracy | before: AUROC |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['zoo']} | {r['seed']} | {r['accuracy']:.3f} | {r['auroc']:.3f} | {r['before_accuracy']:.3f} "
              f"| {r['before_auroc']:.3f} |")
    print()
    print("| zoo | seeds | accuracy mean / min / max | AUROC mean / min / max |")
    print("|---|---:|---|---|")
    for z in zoos:
        rs = [r for r in results if r["zoo"] == z.stem]
        for label, prefix in (("now", ""), ("before", "before_")):
            accs, aurocs = [r[prefix + "accuracy"] for r in rs], [r[prefix + "auroc"] for r in rs]
            print(f"| {z.stem} ({label}) | {len(rs)} | {statistics.mean(accs):.3f} / {min(accs):.3f} / {max(accs):.3f} "
                  f"| {statistics.mean(aurocs):.3f} / {min(aurocs):.3f} / {max(aurocs):.3f} |")
    print()
    print("| zoo | child | weight change vs parent (rel. L2), mean over seeds | DNA distance to parent, mean |")
    print("|---|---|---:|---:|")
    for z in zoos:
        rows: dict[str, list] = {}
        for r in results:
            if r["zoo"] == z.stem:
                for c in r["children"]:
                    rows.setdefault(c["child"], []).append(c)
        for child, cs in rows.items():
            print(f"| {z.stem} | {child} | {statistics.mean(c['weight_delta'] for c in cs):.4f} "
                  f"| {statistics.mean(c['dna_distance'] for c in cs):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
