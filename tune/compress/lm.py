"""Causal-LM loss on plain texts, shared by the LoRA heal (its training loss), FFN importance (its
batches) and the sweep trial (the validation loss ASHA watches). Right padding by hand: nothing
depends on the tokenizer's pad token or padding side, and padding never counts."""
from __future__ import annotations


def tokenize(tokenizer, texts: list[str], max_length: int, *, add_special_tokens: bool = True) -> list:
    """Token ids per text (1-D long tensors), truncated to `max_length`; texts shorter than 2 tokens
    (nothing to predict) are left out. `add_special_tokens=False` for chat-template-rendered texts,
    which hold BOS already."""
    import torch

    out = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=add_special_tokens)["input_ids"]
        if len(ids) >= 2:
            out.append(torch.tensor(ids, dtype=torch.long))
    return out


def right_pad(rows: list, device):
    """Right-padded ids and attention mask; the pad id is irrelevant since padding is masked."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[b, :len(r)] = 1
    return ids.to(device), mask.to(device)


def loss_sum(model, ids, mask):
    """Summed next-token cross-entropy over non-padding targets, and their count."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def mean_loss(model, rows: list, batch_size: int) -> float:
    """Mean per-token loss over tokenized `rows` (see `tokenize`), without gradients."""
    import torch

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            loss, n = loss_sum(model, *right_pad(rows[start:start + batch_size], device))
            total += float(loss)
            tokens += n
    return total / max(tokens, 1)


def lm_loss(model, tokenizer, texts: list[str], *, max_length: int = 128, batch_size: int = 8,
            add_special_tokens: bool = True) -> float:
    """Mean next-token cross-entropy over the non-padding tokens of `texts`, in eval mode (the
    model's train mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return mean_loss(model, tokenize(tokenizer, texts, max_length, add_special_tokens=add_special_tokens),
                         batch_size)
    finally:
        model.train(was_training)
