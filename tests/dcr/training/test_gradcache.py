"""Gradient caching gives the gradients of one plain big batch, and replays dropout exactly."""

from __future__ import annotations

import pytest
import torch
from dcr_helpers import prompt_rows, tiny_model_dir

from dcr.modeling.chat import encode_prompts
from dcr.modeling.model import load_model
from dcr.modeling.prompt_embeddings import batch_embedder
from dcr.modeling.trainable import freeze_above, trainable_parameters
from dcr.training.gradcache import contrastive_backward
from dcr.training.objective import LOSSES, make_loss, same_class_partner

LAYER = 3


def _setup(dropout=0.0):
    model, tokenizer = load_model(tiny_model_dir("llama", dropout=dropout))
    freeze_above(model, LAYER)
    model.train()
    rows = prompt_rows(8)
    ids = encode_prompts(tokenizer, [r["text"] for r in rows])
    labels = torch.tensor([int(r["label"] == "toxic") for r in rows])
    return model, batch_embedder(model, tokenizer, LAYER, precision="fp32"), ids, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in trainable_parameters(model).items()}


@pytest.mark.parametrize("loss", ["circle", "supcon", "infonce"])
def test_cached_gradients_equal_one_big_batch(loss):
    model, embed, ids, labels = _setup()
    loss_fn = make_loss(loss, gamma=16.0)
    plain, plain_emb = contrastive_backward(embed, [ids], labels, loss_fn, cache=False)
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    micro = [ids[k : k + 3] for k in range(0, len(ids), 3)]  # uneven micro-batches, own padding each
    cached, cached_emb = contrastive_backward(embed, micro, labels, loss_fn, cache=True)
    torch.testing.assert_close(cached.loss, plain.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached_emb, plain_emb, rtol=1e-5, atol=1e-5)
    got = _grads(model)
    assert set(got) == set(reference) and len(got) == 9 * LAYER
    for name, g in reference.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_second_pass_replays_dropout():
    model, embed, ids, labels = _setup(dropout=0.3)
    outputs = []

    def recording(batch):
        rep = embed(batch)
        outputs.append(rep.detach().clone())
        return rep

    micro = [ids[k : k + 4] for k in range(0, len(ids), 4)]
    contrastive_backward(recording, micro, labels, make_loss("circle"), cache=True)
    first, second = outputs[: len(micro)], outputs[len(micro) :]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b), "pass 2 must see the dropout masks of pass 1"
    again = recording(micro[0])
    assert not torch.allclose(again, first[0]), "dropout is active, so a fresh forward differs"


def test_infonce_partner_is_same_class_other_row():
    labels = torch.tensor([1, 0, 1, 0, 1, 2, 2])
    partner = same_class_partner(labels)
    assert torch.equal(labels[partner], labels) and not bool((partner == torch.arange(7)).any())
    with pytest.raises(ValueError, match="single row"):
        same_class_partner(torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("loss", LOSSES)
def test_centred_loss_ignores_a_shared_direction(loss):
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    e = torch.randn(8, 6, dtype=torch.float64)
    shared = 50 * torch.randn(6, dtype=torch.float64)
    centred = make_loss(loss, gamma=16.0, center=True)
    plain = make_loss(loss, gamma=16.0)
    assert torch.allclose(centred(e + shared, labels).loss, centred(e, labels).loss)
    assert torch.allclose(centred(e, labels).loss, plain(e - e.mean(0), labels).loss)
    assert not torch.allclose(plain(e + shared, labels).loss, plain(e, labels).loss)
    x = (e + shared).requires_grad_()
    centred(x, labels).loss.backward()
    assert torch.allclose(x.grad.sum(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
