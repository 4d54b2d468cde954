import pytest

from tune.compress.lm import lm_loss, tokenize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / "llama-a"
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_lm_loss_ignores_padding_and_restores_train_mode(llama):
    model, tok = llama
    short, long = "U: Will it rain tomorrow?", "U: What is the weather like today? A: It is a clear and sunny day."
    model.train()
    alone = [lm_loss(model, tok, [t], batch_size=1) for t in (short, long)]
    n = [len(r) - 1 for r in tokenize(tok, [short, long], 128)]
    together = lm_loss(model, tok, [short, long], batch_size=2)  # the short one is padded
    assert together == pytest.approx((alone[0] * n[0] + alone[1] * n[1]) / sum(n), rel=1e-4)
    assert model.training  # put back as it was
    assert lm_loss(model, tok, [long]) < lm_loss(model, tok, ["zebra quantum violet monsoon ledger"])


def test_tokenize_drops_texts_with_nothing_to_predict(llama):
    _, tok = llama
    assert tokenize(tok, ["", "U: hello there"], 128, add_special_tokens=False)[0].numel() >= 2
    assert len(tokenize(tok, [""], 128, add_special_tokens=False)) == 0
