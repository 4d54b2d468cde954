"""DNA analysis: latest-wins loading, cosine distances, trees, the outlier gate and lineage
metrics. Plots and `report.md` live in `actors/report.py`.

Tree method. The default is neighbor-joining (`tree: nj`): it fits an unrooted additive tree and
does not assume a molecular clock, i.e. that every lineage drifted at the same rate from the
root. Fine-tunes, LoRA merges, distillations and quantizations break that assumption badly (a
short continued pre-training barely moves a model, a distillation moves it far), and UPGMA, which
needs the clock, then joins the wrong pairs. UPGMA (`tree: upgma`, average linkage) is offered
for a rooted dendrogram, and is what `dendrogram.png` draws for either choice.

    >>> fps, missing = load_latest(store, ["llama-a", "qwen3-b", "exaone4-c"])   # doctest: +SKIP
    >>> ids, D = distance_matrix(fps)                                            # doctest: +SKIP
    >>> neighbor_joining(ids, D).newick()                                        # doctest: +SKIP
    '(llama-a:0.12,qwen3-b:0.3,exaone4-c:0.41);'
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.fingerprint import ProvenanceError, check_comparable
from cluster.store.storage import ArtifactStore

log = logging.getLogger(__name__)

TREE_WHY = {
    "nj": "neighbor-joining: an unrooted additive tree that does not assume a molecular clock (equal "
          "rates of change), which fine-tunes, LoRA merges and distillations violate",
    "upgma": "UPGMA (average linkage): a rooted ultrametric tree; it assumes every lineage changed at "
             "the same rate, so read it as a clustering rather than a phylogeny",
}


# --- loading -----------------------------------------------------------------------------------
@dataclass
class Fingerprint:
    model_id: str
    vector: np.ndarray  # float32, 1-D
    provenance: dict[str, Any]
    run: str  # the run name (YYYYMMDD-HHMMSS-<id>) the vector came from
    key: str  # the storage key of the file the vector was read from


def load_latest(store: ArtifactStore, model_ids: list[str], kind: str = "dna") -> tuple[dict[str, Fingerprint], dict[str, str]]:
    """(fingerprints, missing): each model's vector from its newest complete OK run (latest-wins;
    dna.npy over dna.json within that run), and {model: reason} for every model without one.
    A model is never silently dropped."""
    fps: dict[str, Fingerprint] = {}
    missing: dict[str, str] = {}
    for mid in model_ids:
        art = store.latest(kind, mid, prefer=(".npy", ".json"))
        if art is None:
            missing[mid] = "no complete ok run"
            continue
        files = set(art.run.marker.get("files", []))
        try:
            doc = store.get_json(f"{art.run.prefix}/dna.json") if "dna.json" in files else {}
            if "dna.npy" in files:
                key = f"{art.run.prefix}/dna.npy"
                vector = np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
            elif "vector" in doc:
                key, vector = f"{art.run.prefix}/dna.json", doc["vector"]
            else:
                missing[mid] = f"run {art.run.name} has neither dna.npy nor dna.json"
                continue
            vector = np.asarray(vector, dtype=np.float32)
        except (ValueError, OSError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            missing[mid] = f"run {art.run.name}: unreadable DNA ({type(exc).__name__}: {first})"
            continue
        if vector.ndim != 1 or not vector.size or not np.all(np.isfinite(vector)):
            missing[mid] = f"run {art.run.name}: DNA vector is not a finite 1-D vector (shape {vector.shape})"
            continue
        fps[mid] = Fingerprint(mid, vector, doc.get("provenance") or {}, art.run.name, key)
    if missing:
        log.warning("no usable DNA for %s", ", ".join(f"{m} ({r})" for m, r in missing.items()))
    return fps, missing


def load_imported(store: ArtifactStore, exclude: set[str], reference: dict | None,
                  ignore: tuple[str, ...] = ()) -> tuple[dict[str, Fingerprint], dict[str, str]]:
    """(fingerprints, left_out): models whose newest complete run was imported (`yard dna import`,
    marker `source: import`) and are not in `exclude`; those whose provenance is not comparable
    with `reference` are left out with the one-line reason instead."""
    ids = []
    for safe in store.model_ids(kind="dna"):
        art = store.latest("dna", safe, prefer=(".npy", ".json"))
        if art is not None and art.run.marker.get("source") == "import":
            mid = art.run.marker.get("model_id", safe)
            if mid not in exclude:
                ids.append(mid)
    fps, left_out = load_latest(store, ids)
    if reference is None and fps:  # no model of this job to compare with: the first import is the yardstick
        reference = next(iter(fps.values())).provenance
    for mid, fp in list(fps.items()):
        try:
            check_comparable({"this job's models": reference, mid: fp.provenance}, ignore)
        except ProvenanceError as exc:
            left_out[mid] = str(exc)
            del fps[mid]
    return fps, left_out


def distance_matrix(fps: dict[str, Fingerprint], ignore: tuple[str, ...] = ()) -> tuple[list[str], np.ndarray]:
    """(ids, D): cosine distances 1 - cos (a zero vector is at distance 1 from everything),
    symmetric with a zero diagonal. ProvenanceError when the vectors were made differently
    (`ignore`: provenance fields the user waived, e.g. ("engine",))."""
    check_comparable({mid: fp.provenance for mid, fp in fps.items()}, ignore)
    ids = list(fps)
    dims = {fps[m].vector.shape[0] for m in ids}
    if len(dims) > 1:
        raise ProvenanceError(f"cannot compare DNA of {', '.join(ids)}: vector lengths differ ({sorted(dims)})")
    X = np.stack([fps[m].vector.astype(np.float64) for m in ids]) if ids else np.zeros((0, 0))
    norms = np.linalg.norm(X, axis=1) if ids else np.zeros(0)
    unit = X / np.where(norms == 0, 1.0, norms)[:, None]
    D = 1.0 - unit @ unit.T
    zero = norms == 0
    D[zero, :] = D[:, zero] = 1.0
    D = np.clip((D + D.T) / 2, 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    return ids, D


def waived(cfg) -> tuple[str, ...]:
    """Provenance fields an AnalysisConfig lets differ."""
    return ("engine",) if getattr(cfg, "compare_across_engines", False) else ()


def lineage_distances(fps: dict[str, Fingerprint], cfg) -> tuple[list[str], np.ndarray]:
    """(ids, D) for the tree and the lineage check, per `cfg.distance` (an actors.config
    AnalysisConfig): plain cosine, or cosine after subtracting the models' mean vector.

    Centering removes what every compared model shares: each DNA vector is a fixed linear map of
    the answers' embeddings, so the mean vector is the DNA of the average answer to each probe
    (the probe's topic, the common language). With toy models whose answers are dominated by it,
    plain cosine put a child nearer another family than its parent on some seeds; centered, the
    lineage held on every seed measured (BENCHMARKS.md, "Lineage across zoo seeds"). With fewer
    than 3 models there is no population to center on and plain cosine is used."""
    ids, D = distance_matrix(fps, waived(cfg))
    if cfg.distance == "cosine" or len(ids) < 3:
        return ids, D
    X = np.stack([fps[m].vector.astype(np.float64) for m in ids])
    X = X - X.mean(axis=0)
    norms = np.linalg.norm(X, axis=1)
    unit = X / np.where(norms == 0, 1.0, norms)[:, None]
    C = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    C = (C + C.T) / 2
    np.fill_diagonal(C, 0.0)
    return ids, C


# --- trees -------------------------------------------------------------------------------------
@dataclass
class Node:
    name: str | None = None  # leaves only
    children: list[tuple["Node", float]] = field(default_factory=list)  # (child, branch length)


def _label(name: str) -> str:
    if any(c in name for c in " \t()[]':;,"):
        return "'" + name.replace("'", "''") + "'"
    return name


@dataclass
class Tree:
    root: Node
    method: str  # "nj" or "upgma"
    linkage: np.ndarray | None = None  # scipy linkage matrix (UPGMA only)

    def newick(self) -> str:
        def fmt(node: Node) -> str:
            if not node.children:
                return _label(node.name or "")
            return "(" + ",".join(f"{fmt(c)}:{max(length, 0.0):.6g}" for c, length in node.children) + ")"

        return fmt(self.root) + ";"

    def leaves(self) -> list[str]:
        def walk(node: Node) -> list[str]:
            return [node.name] if not node.children else [x for c, _ in node.children for x in walk(c)]

        return walk(self.root)

    def splits(self) -> set[frozenset[str]]:
        """Non-trivial bipartitions, each as the side without the alphabetically first leaf
        (comparable between rooted and unrooted trees)."""
        everyone = frozenset(self.leaves())
        first = min(everyone)
        out = set()

        def walk(node: Node) -> frozenset[str]:
            below = frozenset([node.name]) if not node.children else frozenset().union(*(walk(c) for c, _ in node.children))
            side = below if first not in below else everyone - below
            if 1 < len(side) < len(everyone) - 1:
                out.add(side)
            return below

        walk(self.root)
        return out

    def patristic(self, ids: list[str]) -> np.ndarray:
        """Path lengths between leaves along the tree, in `ids` order."""
        index = {m: i for i, m in enumerate(ids)}
        P = np.zeros((len(ids), len(ids)))

        def walk(node: Node) -> dict[str, float]:
            if not node.children:
                return {node.name: 0.0}
            subs = [{leaf: d + length for leaf, d in walk(c).items()} for c, length in node.children]
            for x, left in enumerate(subs):
                for right in subs[x + 1:]:
                    for a, da in left.items():
                        for b, db in right.items():
                            P[index[a], index[b]] = P[index[b], index[a]] = da + db
            return {leaf: d for sub in subs for leaf, d in sub.items()}

        walk(self.root)
        return P


def neighbor_joining(ids: list[str], D: np.ndarray) -> Tree:
    """Saitou-Nei neighbor-joining; an unrooted tree written with a three-way root. Negative
    branch estimates (non-additive noise) are clamped to 0, the usual convention."""
    d = np.asarray(D, dtype=np.float64).copy()
    nodes = [Node(name=m) for m in ids]
    while len(nodes) > 3:
        m = len(nodes)
        r = d.sum(axis=1)
        Q = (m - 2) * d - r[:, None] - r[None, :]
        np.fill_diagonal(Q, np.inf)
        i, j = sorted(np.unravel_index(int(np.argmin(Q)), Q.shape))
        li = 0.5 * d[i, j] + (r[i] - r[j]) / (2 * (m - 2))
        li = min(max(li, 0.0), d[i, j])
        joined = Node(children=[(nodes[i], li), (nodes[j], d[i, j] - li)])
        to_new = 0.5 * (d[i] + d[j] - d[i, j])
        keep = [k for k in range(m) if k not in (i, j)]
        nd = np.zeros((m - 1, m - 1))
        nd[:-1, :-1] = d[np.ix_(keep, keep)]
        nd[-1, :-1] = nd[:-1, -1] = to_new[keep]
        nodes, d = [nodes[k] for k in keep] + [joined], nd
    if len(nodes) == 3:
        (a, b, c), lengths = nodes, [
            (d[0, 1] + d[0, 2] - d[1, 2]) / 2, (d[0, 1] + d[1, 2] - d[0, 2]) / 2, (d[0, 2] + d[1, 2] - d[0, 1]) / 2,
        ]
        root = Node(children=[(n, max(length, 0.0)) for n, length in zip((a, b, c), lengths)])
    elif len(nodes) == 2:
        root = Node(children=[(nodes[0], d[0, 1] / 2), (nodes[1], d[0, 1] / 2)])
    elif len(nodes) == 1:
        root = nodes[0]
    else:
        raise ValueError("neighbor_joining needs at least one model")
    return Tree(root, "nj")


def upgma_linkage(D: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    return linkage(squareform(np.asarray(D, dtype=np.float64), checks=False), method="average")


def upgma(ids: list[str], D: np.ndarray) -> Tree:
    """UPGMA (scipy average linkage): a rooted tree whose node heights are half the merge
    distance; `.linkage` feeds scipy's dendrogram."""
    if len(ids) == 1:
        return Tree(Node(name=ids[0]), "upgma")
    if not ids:
        raise ValueError("upgma needs at least one model")
    Z = upgma_linkage(D)
    nodes: list[Node] = [Node(name=m) for m in ids]
    heights = [0.0] * len(ids)
    for a, b, dist, _ in Z:
        a, b, h = int(a), int(b), dist / 2
        nodes.append(Node(children=[(nodes[a], h - heights[a]), (nodes[b], h - heights[b])]))
        heights.append(h)
    return Tree(nodes[-1], "upgma", Z)


def build_tree(kind: str, ids: list[str], D: np.ndarray) -> Tree:
    if kind not in TREE_WHY:
        raise ValueError(f"tree: {kind!r} is not a tree method (allowed: {', '.join(TREE_WHY)})")
    return neighbor_joining(ids, D) if kind == "nj" else upgma(ids, D)


# --- gates and lineage metrics -----------------------------------------------------------------
def outlier_pairs(
    ids: list[str], D: np.ndarray, threshold: float, identical_groups: list[list[str]] = (),
    related: list[tuple[str, str]] = (), related_threshold: float = 0.0,
) -> list[tuple[str, str, float]]:
    """Pairs closer than `threshold`, closest first, unless declared identical (both in one
    group): a near-zero distance is almost always a silent failure (collapsed answers).

    Pairs in `related` (a registered parent and its derivative, or two derivatives of one parent:
    a quantized copy, a short fine-tune) are expected to be close; they are flagged only under
    `related_threshold`, where the derivative's outputs are all but its parent's (the change never
    took effect)."""
    declared = [set(g) for g in identical_groups]
    kin = {frozenset(p) for p in related}
    out = []
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            limit = related_threshold if frozenset((ids[i], ids[j])) in kin else threshold
            if D[i, j] < limit and not any(ids[i] in g and ids[j] in g for g in declared):
                out.append((ids[i], ids[j], float(D[i, j])))
    return sorted(out, key=lambda p: p[2])


def lineage_pairs(parents: dict[str, str | None]) -> list[tuple[str, str]]:
    """(parent, child) and (sibling, sibling) pairs among the models of `parents` (id -> parent id)."""
    pairs = [(m, p) for m, p in parents.items() if p in parents]
    children: dict[str, list[str]] = {}
    for m, p in parents.items():
        if p:
            children.setdefault(p, []).append(m)
    for kids in children.values():
        pairs += [(a, b) for i, a in enumerate(kids) for b in kids[i + 1:]]
    return pairs


def nearest_family_accuracy(ids: list[str], D: np.ndarray, families: dict[str, str]) -> tuple[float, list[dict]]:
    """(accuracy, rows): the fraction of models whose nearest other model is of their own family.
    Each row also says whether the model is *separated*: every own-family member nearer than any
    other-family model (the stricter check). Models alone in their family cannot score and get
    hit = separated = None; accuracy is nan when no model can score."""
    fam = [families.get(m, m) for m in ids]
    rows, hits = [], []
    for i, mid in enumerate(ids):
        others = [j for j in range(len(ids)) if j != i]
        if not others:
            rows.append({"model": mid, "family": fam[i], "nearest": None, "nearest_family": None,
                         "distance": None, "hit": None, "separated": None})
            continue
        k = min(others, key=lambda j: (D[i, j], ids[j]))
        own = [D[i, j] for j in others if fam[j] == fam[i]]
        other = [D[i, j] for j in others if fam[j] != fam[i]]
        scorable = bool(own)
        hit = (fam[k] == fam[i]) if scorable else None
        separated = bool(max(own) < min(other) if other else True) if scorable else None
        if scorable:
            hits.append(hit)
        rows.append({"model": mid, "family": fam[i], "nearest": ids[k], "nearest_family": fam[k],
                     "distance": float(D[i, k]), "hit": hit, "separated": separated})
    return (float(np.mean(hits)) if hits else math.nan), rows


def family_pair_auroc(ids: list[str], D: np.ndarray, families: dict[str, str]) -> float:
    """AUROC of -distance separating same-family pairs from different-family pairs (1.0: every
    same-family pair is closer than every cross-family pair; 0.5: chance). nan when either kind
    of pair is absent."""
    from sklearn.metrics import roc_auc_score

    labels, scores = [], []
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            labels.append(int(families.get(ids[i], ids[i]) == families.get(ids[j], ids[j])))
            scores.append(-float(D[i, j]))
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))
