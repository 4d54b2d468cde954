"""tune/persona/trl_cpu.py: TorchLogProbs against log_softmax on tiny tensors (values, optional
outputs, gradients), and ensure_logprob_kernel installing it only where trl has no kernel. Training
through it: test_train.py."""
import pytest
import torch

from tune.persona.trl_cpu import TorchLogProbs, ensure_logprob_kernel

ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _tiny(requires_grad=False):
    """hidden [5, 4], weight [7, 4], bias [7], targets [5], seeded."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=g, requires_grad=requires_grad)
    weight = torch.randn(7, 4, generator=g, requires_grad=requires_grad)
    bias = torch.randn(7, generator=g)
    targets = torch.tensor([0, 3, 6, 2, 2])
    return hidden, weight, bias, targets


def _reference_logits(hidden, weight, bias, temperature, softcap=None, scale=1.0):
    logits = torch.nn.functional.linear(hidden, weight, bias) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


@pytest.mark.parametrize("temperature, softcap, scale, with_bias", [
    (1.0, None, 1.0, False),
    (0.7, None, 1.0, True),
    (1.3, 2.0, 0.5, True),   # Gemma-style softcapping and a logit scale
])
def test_log_probs_match_log_softmax(temperature, softcap, scale, with_bias):
    hidden, weight, bias, targets = _tiny()
    bias = bias if with_bias else None
    logprobs, entropy, log_sum_sq, mean_logits, is_top1 = TorchLogProbs.apply(
        hidden, weight, bias, targets, temperature, 4, softcap, scale)
    expected = torch.log_softmax(_reference_logits(hidden, weight, bias, temperature, softcap, scale), -1)
    assert logprobs.shape == (5,) and torch.allclose(logprobs, expected[torch.arange(5), targets], atol=1e-5)
    assert (entropy, log_sum_sq, mean_logits, is_top1) == (None, None, None, None)   # only what was asked


def test_optional_outputs_match_their_definitions():
    hidden, weight, bias, targets = _tiny()
    logits = _reference_logits(hidden, weight, bias, 1.0)
    p = torch.softmax(logits, -1)
    _, entropy, log_sum_sq, mean_logits, _ = TorchLogProbs.apply(hidden, weight, bias, targets, 1.0, 4, outputs=ALL)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)
    assert torch.allclose(log_sum_sq, (p ** 2).sum(-1).log(), atol=1e-5)
    assert torch.allclose(mean_logits, logits.mean(-1), atol=1e-5)


def test_is_top1_marks_the_argmax_target():
    # integer logits, one clear maximum per row: logits[n] = weight[:, n]
    hidden = torch.eye(3)
    weight = torch.tensor([[5.0, 0.0, 1.0], [1.0, 4.0, 0.0], [0.0, 1.0, 6.0], [2.0, 2.0, 2.0]])
    targets = torch.tensor([0, 3, 2])
    out = TorchLogProbs.apply(hidden, weight, None, targets, 1.0, 2, outputs=("log_probs", "is_top1"))
    assert out[4].tolist() == [True, False, True]


def test_gradients_flow_like_log_softmax():
    hidden, weight, bias, targets = _tiny(requires_grad=True)
    logprobs, entropy, log_sum_sq, _, _ = TorchLogProbs.apply(hidden, weight, bias, targets, 0.9, 4, outputs=ALL)
    (-logprobs.sum() + 0.1 * entropy.sum()).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    p = torch.log_softmax(_reference_logits(hidden, weight, bias, 0.9), -1)
    (-p[torch.arange(5), targets].sum() - 0.1 * (p.exp() * p).sum()).backward()
    assert torch.allclose(got[0], hidden.grad, atol=1e-5) and torch.allclose(got[1], weight.grad, atol=1e-5)
    assert not log_sum_sq.requires_grad   # a logged statistic, outside the graph


def test_half_precision_inputs_score_in_float32():
    hidden, weight, bias, targets = _tiny()
    logprobs, *_ = TorchLogProbs.apply(hidden.bfloat16(), weight.bfloat16(), None, targets, 1.0, 4)
    assert logprobs.dtype == torch.float32 and bool((logprobs <= 0).all())


def test_kernel_installed_only_where_trl_has_none(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", None, raising=False)   # trl without Triton
    assert ensure_logprob_kernel() is True and trl_utils._ChunkedLogProbFunction is TorchLogProbs
    assert ensure_logprob_kernel() is False                                        # already there
    triton_kernel = object()
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", triton_kernel)       # trl with Triton
    assert ensure_logprob_kernel() is False and trl_utils._ChunkedLogProbFunction is triton_kernel
