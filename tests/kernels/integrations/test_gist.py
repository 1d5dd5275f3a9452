"""The GISTEmbed drop-ins against the library's GISTEmbedLoss and CachedGISTEmbedLoss: values and gradients
for both margin strategies, margins, contrast_anchors / contrast_positives, with and without a negative
column, the cached form's cached gradients, two gloo ranks with gather_across_devices, and a real forward
of all-MiniLM-L6-v2 (model) guided by a second copy."""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

st = pytest.importorskip("sentence_transformers")
from offline_minilm import minilm_dir  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer import losses  # noqa: E402
from sentence_transformers.sentence_transformer.losses import gist_embed  # noqa: E402
from spawn_ranks import rank_reports  # noqa: E402

from dcr_kernels.integrations import sentence_transformers as ours  # noqa: E402

SETTINGS = [
    dict(margin_strategy=strategy, margin=margin, contrast_anchors=anchors, contrast_positives=positives)
    for strategy, margin, anchors, positives in itertools.product(
        ("absolute", "relative"), (0.0, 0.1), (True, False), (True, False)
    )
]


@pytest.fixture(scope="module")
def models():
    return SentenceTransformer(minilm_dir(), device="cpu").eval(), SentenceTransformer(minilm_dir(), device="cpu")


def _columns(b: int, d: int, columns: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Model embeddings of anchors, positives (and negatives), and a guide's that roughly agrees with them."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(b, d, generator=gen, dtype=torch.float64)
    model = [base + 0.6 * torch.randn(b, d, generator=gen, dtype=torch.float64) for _ in range(columns)]
    return model, [e + 0.4 * torch.randn(b, d, generator=gen, dtype=torch.float64) for e in model]


def _value_and_grads(loss, embeddings, guide_embeddings, patch):
    """The loss's forward with the columns' embeddings given (both libraries embed through embed_columns)."""
    leaves = [e.clone().requires_grad_() for e in embeddings]
    given = iter([leaves, guide_embeddings])
    with patch.context() as p:
        p.setattr(gist_embed, "embed_columns", lambda model, features: next(given))
        p.setattr(ours, "embed_columns", lambda model, features: next(given))
        value = loss([{} for _ in leaves], None)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def _assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("columns", [2, 3])
def test_gist_matches_the_library(models, settings, columns, monkeypatch):
    embeddings, guide = _columns(17, 10, columns, seed=columns)
    kw = dict(settings, temperature=0.05)
    got = _value_and_grads(ours.GISTEmbedLoss(*models, **kw), embeddings, guide, monkeypatch)
    want = _value_and_grads(losses.GISTEmbedLoss(*models, **kw), embeddings, guide, monkeypatch)
    _assert_same(got, want)


def test_cached_gist_caches_the_same_gradients(models):
    b = 37
    for settings in SETTINGS[::3]:
        embeddings, guide = _columns(b, 12, 3, seed=9)
        split = lambda cols: [[c[i : i + 16] for i in range(0, b, 16)] for c in cols]  # noqa: E731
        results = []
        for cls in (ours.CachedGISTEmbedLoss, losses.CachedGISTEmbedLoss):
            reps = [[r.clone().requires_grad_() for r in col] for col in split(embeddings)]
            value = cls(*models, mini_batch_size=16, **settings).calculate_loss(reps, split(guide), with_backward=True)
            results.append((value, [r.grad for col in reps for r in col]))
        _assert_same(*results)


def test_real_forward_of_a_model_guided_by_another(models):
    model, guide = models
    texts = [["How do I kill a Python process?", "How can I stop a running Python program?", "Kill the process."],
             ["What is the capital of France?", "Paris is France's capital.", "France is in Europe."]]  # fmt: skip
    anchors, positives, negatives = (list(col) for col in zip(*texts, strict=True))
    grads = []
    for cls in (ours.GISTEmbedLoss, losses.GISTEmbedLoss):
        model.zero_grad()
        features = [model.tokenize(col) for col in (anchors, positives, negatives)]
        value = cls(model, guide, temperature=0.05)(features, None)
        value.backward()
        grads.append((value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    # fp32 model, logits up to 1 / temperature = 20: agreement to fp32 rounding of the logits
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=2e-5)
    got, want = torch.cat([g.flatten() for g in grads[0][1]]), torch.cat([g.flatten() for g in grads[1][1]])
    assert float((got - want).norm() / want.norm()) < 1e-4


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        full, full_guide = _columns(6 * world, 8, 3, seed=7)
        local = [c[6 * rank : 6 * (rank + 1)] for c in full]
        local_guide = [c[6 * rank : 6 * (rank + 1)] for c in full_guide]
        models = (SentenceTransformer(minilm_dir(), device="cpu"), SentenceTransformer(minilm_dir(), device="cpu"))
        report = {}
        patch = pytest.MonkeyPatch()
        for i, settings in enumerate(SETTINGS[::5]):
            kw = dict(settings, gather_across_devices=True)
            got = _value_and_grads(ours.GISTEmbedLoss(*models, **kw), local, local_guide, patch)
            want = _value_and_grads(losses.GISTEmbedLoss(*models, **kw), local, local_guide, patch)
            report[i] = (got, want)
        torch.save(report, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_across_devices_like_the_library():
    minilm_dir()
    reports = rank_reports(_worker, 2)
    for report in reports:
        for got, want in report.values():
            _assert_same(got, want)
