"""A plain-torch stand-in for trl's Triton log-prob kernel, so SFT and DPO train where Triton is absent.

trl 1.15's SFTTrainer and DPOTrainer score tokens through a fused LM head whose kernel
(`trl.kernels.ChunkedLogProbFunction`) needs Triton; the CPU build of torch ships without it and trl
then leaves the kernel as None, so every training step fails. `ensure_logprob_kernel()` installs
`TorchLogProbs` in its place, and only then: wherever Triton imports, trl's kernel is untouched.

TorchLogProbs materialises the [tokens, vocab] logits, which is what the kernel avoids; that costs
memory only at scales a CPU run never reaches.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class TorchLogProbs:
    """Same call and outputs as `ChunkedLogProbFunction.apply`, autograd through ordinary torch ops."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        import torch

        logits = hidden.float() @ weight.float().t()
        if bias is not None:
            logits = logits + bias.float()
        logits = logits * logit_scale
        if final_logit_softcapping is not None:
            logits = torch.tanh(logits / final_logit_softcapping) * final_logit_softcapping
        logits = logits / temperature
        log_z = torch.logsumexp(logits, dim=-1)
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = target_logit - log_z
        probs = None
        entropy = log_sum_sq = mean_logits = is_top1 = None
        if "entropy" in outputs or "log_sum_sq_probs" in outputs:
            probs = torch.softmax(logits, dim=-1)
        if "entropy" in outputs:
            entropy = log_z - (probs * logits).sum(-1)
        with torch.no_grad():
            if "log_sum_sq_probs" in outputs:
                log_sum_sq = torch.log((probs.detach() ** 2).sum(-1))
            if "mean_logits" in outputs:
                mean_logits = logits.detach().mean(-1)
            if "is_top1" in outputs:
                is_top1 = logits.detach().argmax(-1) == targets
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1


def ensure_logprob_kernel() -> bool:
    """Install TorchLogProbs when trl has no Triton kernel; True if it did."""
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_ChunkedLogProbFunction", object()) is not None:
        return False
    trl_utils._ChunkedLogProbFunction = TorchLogProbs
    log.info("Triton not importable: trl's fused log-prob kernel replaced by a plain-torch one")
    return True
