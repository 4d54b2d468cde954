"""Knowledge distillation from the unpruned base: top-k teacher logits, cached once per base.

The teacher (the unpruned base) runs once per (base content, calibration texts, top_k,
max_length); its top-k logits per non-padding token go into the store (kind "teacher") and every
later trial reads them back without touching the teacher. Teacher forward passes per sweep =
the number of KD samples (once), not trials x samples.

    cache = teacher_logits_cached(store, "llama-a", teacher, tokenizer, texts, top_k=32,
                                  content=model_content_key(spec, plan))
    stats = distill(student, cache, kd_samples=64, temperature=2.0)   # {kd_loss_first, kd_loss_last, ...}

The loss is KL(teacher || student) at temperature T over the teacher's top-k support: the
teacher's top-k logits are renormalized with a softmax at T; the student's full-vocabulary
log-softmax at T is gathered at the same indices; the KL is averaged over tokens and times T^2.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from dataclasses import dataclass, field

import numpy as np

from cluster.store.storage import ArtifactStore

log = logging.getLogger(__name__)

TEACHER_KIND = "teacher"
TEACHER_FILE = "teacher_topk.npz"
TEACHER_KEY_FILE = "key.json"


@dataclass
class TeacherCache:
    """Per calibration text: its token ids (L,), and the teacher's top-k logits at each of its
    tokens, values (L, k) float16 and vocabulary indices (L, k) int32."""

    input_ids: list[np.ndarray]
    topk_values: list[np.ndarray]
    topk_indices: list[np.ndarray]
    key: dict = field(default_factory=dict)
    teacher_forward_passes: int = 0  # made by the call that returned this cache (0 on a store hit)
    prefix: str = ""  # the store run holding it

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def top_k(self) -> int:
        return int(self.topk_values[0].shape[1]) if self.topk_values else 0


def teacher_cache_key(base_id: str, texts: list[str], top_k: int, max_length: int, content: dict) -> dict:
    """What identifies a teacher computation: the base's content (`cluster.models.content.model_content_key`,
    so a rebuilt model under the same id is a miss), calibration texts (hashed), top_k, max_length."""
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    key = {"base_id": base_id, "model": content, "texts_sha256": digest, "top_k": top_k, "max_length": max_length}
    return json.loads(json.dumps(key, sort_keys=True))  # what comes back from the store compares equal


def _check_args(texts: list[str], top_k, max_length) -> list[str]:
    for name, value in (("top_k", top_k), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} must be a positive integer")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("calibration texts: empty (need at least one non-blank text)")
    return texts


def _pack(cache: TeacherCache) -> bytes:
    lengths = np.array([len(ids) for ids in cache.input_ids], dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        lengths=lengths,
        input_ids=np.concatenate(cache.input_ids).astype(np.int32),
        values=np.concatenate(cache.topk_values).astype(np.float16),
        indices=np.concatenate(cache.topk_indices).astype(np.int32),
    )
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    with np.load(io.BytesIO(data)) as z:
        cuts = np.cumsum(z["lengths"])[:-1]
        return (list(np.split(z["input_ids"], cuts)), list(np.split(z["values"], cuts)),
                list(np.split(z["indices"], cuts)))


def teacher_topk(teacher, tokenizer, texts: list[str], *, top_k: int = 32, max_length: int = 128) -> TeacherCache:
    """Run the teacher once per text (no padding, so positions match the student's exactly) and
    keep its top-k logits at every token."""
    import torch

    texts = _check_args(texts, top_k, max_length)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    ids_out, vals_out, idx_out = [], [], []
    passes = 0
    try:
        with torch.no_grad():
            for text in texts:
                enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
                ids = enc["input_ids"]
                if ids.shape[1] == 0:
                    raise ValueError(f"calibration text {text[:40]!r} tokenizes to no tokens")
                logits = teacher(input_ids=ids.to(device), use_cache=False).logits[0].float()
                passes += 1
                k = min(top_k, logits.shape[-1])
                vals, idx = logits.topk(k, dim=-1)
                ids_out.append(ids[0].cpu().numpy().astype(np.int32))
                vals_out.append(vals.cpu().numpy().astype(np.float16))
                idx_out.append(idx.cpu().numpy().astype(np.int32))
    finally:
        teacher.train(was_training)
    return TeacherCache(ids_out, vals_out, idx_out, teacher_forward_passes=passes)


def stored_teacher_logits(store: ArtifactStore, base_id: str, texts: list[str], *, top_k: int = 32,
                          max_length: int = 128, content: dict) -> TeacherCache | None:
    """The cached top-k logits for exactly these arguments, or None: trials read them this way
    and never hold a teacher (the sweep's prepare step hands them the base's `content` key)."""
    texts = _check_args(texts, top_k, max_length)
    key = teacher_cache_key(base_id, texts, top_k, max_length, content)
    run = store.find_cached(TEACHER_KIND, base_id, key, TEACHER_FILE)
    if run is None:
        return None
    log.info("teacher top-%d logits for %s from the store: %s", top_k, base_id, run.prefix)
    ids, vals, idx = _unpack(store.get_bytes(f"{run.prefix}/{TEACHER_FILE}"))
    return TeacherCache(ids, vals, idx, key=key, teacher_forward_passes=0, prefix=run.prefix)


def teacher_logits_cached(store: ArtifactStore, base_id: str, teacher, tokenizer, texts: list[str], *,
                          top_k: int = 32, max_length: int = 128, content: dict) -> TeacherCache:
    """`teacher_topk` computed once per (base content, calibration texts, top_k, max_length) and
    kept in `store` (kind "teacher"); later calls read it back and never touch the teacher or
    tokenizer. `content`: `cluster.models.content.model_content_key` of the teacher."""
    texts = _check_args(texts, top_k, max_length)
    key = teacher_cache_key(base_id, texts, top_k, max_length, content)
    hit = stored_teacher_logits(store, base_id, texts, top_k=top_k, max_length=max_length, content=content)
    if hit is not None:
        return hit
    cache = teacher_topk(teacher, tokenizer, texts, top_k=top_k, max_length=max_length)
    cache.key = key
    writer = store.new_run(TEACHER_KIND, base_id)
    writer.put_bytes(TEACHER_FILE, _pack(cache))
    writer.put_json(TEACHER_KEY_FILE, {"key": key, "texts": len(texts),
                                       "tokens": int(sum(len(i) for i in cache.input_ids))})
    writer.complete(cache_key=key, teacher_forward_passes=cache.teacher_forward_passes)
    cache.prefix = writer.prefix
    log.info("teacher top-%d logits for %s: %d forward passes, stored at %s", top_k, base_id,
             cache.teacher_forward_passes, writer.prefix)
    return cache


def _batch(cache: TeacherCache, rows: list[int], device):
    """Right-padded tensors for `rows`: ids, mask, top-k values (float32) and indices."""
    import torch

    n, k = max(len(cache.input_ids[r]) for r in rows), cache.top_k
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    vals = torch.zeros(len(rows), n, k, dtype=torch.float32)
    idx = torch.zeros(len(rows), n, k, dtype=torch.long)
    for b, r in enumerate(rows):
        L = len(cache.input_ids[r])
        ids[b, :L] = torch.from_numpy(cache.input_ids[r].astype(np.int64))
        mask[b, :L] = 1
        vals[b, :L] = torch.from_numpy(cache.topk_values[r].astype(np.float32))
        idx[b, :L] = torch.from_numpy(cache.topk_indices[r].astype(np.int64))
    return ids.to(device), mask.to(device), vals.to(device), idx.to(device)


def kd_loss(student_logits, mask, topk_values, topk_indices, temperature: float):
    """Mean over non-padding tokens of KL(teacher top-k || student) at `temperature`, times T^2."""
    import torch

    t = float(temperature)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1).gather(-1, topk_indices)
    log_p = torch.log_softmax(topk_values / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    m = mask.bool()
    return kl[m].mean() * (t * t)


def distill(student, cache: TeacherCache, *, kd_samples: int, temperature: float = 2.0, steps: int = 100,
            lr: float = 1e-4, batch_size: int = 4, seed: int = 0, on_step=None) -> dict:
    """Train `student` in place on the first `kd_samples` cached texts with the top-k KD loss
    (AdamW, `steps` steps of `batch_size` texts, reshuffled each epoch). kd_loss_first and
    kd_loss_last are the loss over all `kd_samples` texts before and after training (None when
    kd_samples is 0, which trains nothing). `on_step(step)` runs after each step."""
    import torch

    available = len(cache)
    if isinstance(kd_samples, bool) or not isinstance(kd_samples, int) or not 0 <= kd_samples <= available:
        raise ValueError(f"kd_samples: {kd_samples!r} must be an integer in 0..{available} "
                         f"(the cached calibration texts)")
    if not temperature > 0:
        raise ValueError(f"temperature: {temperature!r} must be > 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: {steps!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} must be a positive integer")
    if kd_samples == 0:
        return {"kd_loss_first": None, "kd_loss_last": None, "steps": 0, "kd_samples": 0}

    device = next(student.parameters()).device
    rows = list(range(kd_samples))

    def evaluate() -> float:
        total, tokens = 0.0, 0
        with torch.no_grad():
            for s in range(0, kd_samples, batch_size):
                ids, mask, vals, idx = _batch(cache, rows[s:s + batch_size], device)
                logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
                n = int(mask.sum())
                total += float(kd_loss(logits, mask, vals, idx, temperature)) * n
                tokens += n
        return total / tokens

    was_training = student.training
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    try:
        student.eval()
        first = evaluate()
        student.train()
        order: list[int] = []
        for step in range(steps):
            if len(order) < min(batch_size, kd_samples):
                perm = rows[:]
                rng.shuffle(perm)
                order += perm
            picked, order = order[:batch_size], order[batch_size:]
            ids, mask, vals, idx = _batch(cache, picked, device)
            logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = kd_loss(logits, mask, vals, idx, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(step + 1)
        student.eval()
        last = evaluate()
    finally:
        student.train(was_training)
    log.info("distilled on %d samples, %d steps: KD loss %.4f -> %.4f", kd_samples, steps, first, last)
    return {"kd_loss_first": first, "kd_loss_last": last, "steps": steps, "kd_samples": kd_samples}
