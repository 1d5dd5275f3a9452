"""The sentence-transformers drop-ins against the library's own losses: values and embedding gradients for
every setting the library accepts (directions, partitions, hardness modes, hard-negative columns), the
symmetric form, the cached form's cached gradients, dot-product similarity, two gloo ranks with
gather_across_devices, a clear error for other similarities, and the same trained weights from
SentenceTransformerTrainer on all-MiniLM-L6-v2."""

from __future__ import annotations

import itertools
import os
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

st = pytest.importorskip("sentence_transformers")
from offline_minilm import minilm_dir  # noqa: E402
from sentence_transformers import util  # noqa: E402
from sentence_transformers.sentence_transformer import losses  # noqa: E402
from spawn_ranks import rank_reports  # noqa: E402

from dcr_kernels.integrations import sentence_transformers as ours  # noqa: E402


class _NoModel(torch.nn.Module):
    """Stands in for a SentenceTransformer where only the loss over given embeddings is compared."""


def _columns(b: int, d: int, columns: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(b, d, generator=gen, dtype=torch.float64)
    return [anchors] + [anchors + torch.randn(b, d, generator=gen, dtype=torch.float64) for _ in range(columns - 1)]


def _value_and_grads(loss, embeddings):
    leaves = [e.clone().requires_grad_() for e in embeddings]
    value = loss.compute_loss_from_embeddings(leaves, None)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


EXTRA_DIRECTIONS = ("query_to_query", "doc_to_query", "doc_to_doc")
DIRECTIONS = [("query_to_doc", *extra) for n in range(4) for extra in itertools.combinations(EXTRA_DIRECTIONS, n)]
HARDNESS = [
    dict(),
    dict(hardness_mode="in_batch_negatives", hardness_strength=9.0),
    dict(hardness_mode="hard_negatives", hardness_strength=5.0),
    dict(hardness_mode="all_negatives", hardness_strength=0.7),
]
# every combination the library accepts: per_direction needs the positive in every direction's candidates
ALL_SETTINGS = [
    dict(directions=d, partition_mode=p, **h)
    for d in DIRECTIONS
    for p in ("joint", "per_direction")
    if p == "joint" or not set(d) & {"query_to_query", "doc_to_doc"}
    for h in HARDNESS
]
SETTINGS = [
    dict(),
    dict(scale=50.0),
    dict(similarity_fct=util.dot_score, scale=0.05),
    dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
    dict(directions=tuple(DIRECTIONS[-1]), partition_mode="joint", hardness_mode="all_negatives", hardness_strength=3),
    dict(similarity_fct=util.dot_score, scale=0.05, directions=("query_to_doc", "doc_to_doc"),
         hardness_mode="hard_negatives", hardness_strength=2.0),
]  # fmt: skip


@pytest.mark.parametrize("settings", ALL_SETTINGS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
@pytest.mark.parametrize("columns", [2, 4])
def test_every_library_setting_matches_the_library(settings, columns):
    embeddings = _columns(13, 9, columns, seed=columns + len(settings))
    got = _value_and_grads(ours.MultipleNegativesRankingLoss(_NoModel(), **settings), embeddings)
    want = _value_and_grads(losses.MultipleNegativesRankingLoss(_NoModel(), **settings), embeddings)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("columns", [2, 3, 5])  # anchors, positives, then hard-negative columns
def test_ranking_loss_matches_the_library(settings, columns):
    embeddings = _columns(19, 12, columns, seed=columns)
    got = _value_and_grads(ours.MultipleNegativesRankingLoss(_NoModel(), **settings), embeddings)
    want = _value_and_grads(losses.MultipleNegativesRankingLoss(_NoModel(), **settings), embeddings)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_symmetric_class_is_the_per_direction_loss():
    embeddings = _columns(11, 6, 2, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        want = _value_and_grads(losses.MultipleNegativesSymmetricRankingLoss(_NoModel()), embeddings)
    got = _value_and_grads(ours.MultipleNegativesSymmetricRankingLoss(_NoModel()), embeddings)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)


def test_cached_loss_caches_the_same_gradients():
    """calculate_loss with backward: the value and the gradient of every mini-batch's embeddings."""
    b, d = 70, 16
    for settings in SETTINGS:
        reps = [[c[i : i + 32] for i in range(0, b, 32)] for c in _columns(b, d, 3, seed=5)]
        grads = {}
        for name, cls in (("ours", ours.CachedMultipleNegativesRankingLoss),
                          ("theirs", losses.CachedMultipleNegativesRankingLoss)):  # fmt: skip
            leaves = [[r.clone().requires_grad_() for r in col] for col in reps]
            value = cls(_FakeModel(), mini_batch_size=32, **settings).calculate_loss(leaves, with_backward=True)
            grads[name] = (value, [r.grad for col in leaves for r in col])
        torch.testing.assert_close(grads["ours"][0], grads["theirs"][0], rtol=1e-10, atol=1e-12)
        for g, w in zip(grads["ours"][1], grads["theirs"][1], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


class _FakeModel(torch.nn.Module):
    """The cached loss checks its model's first module; a plain module passes."""

    def __getitem__(self, i):
        return torch.nn.Identity()


def test_other_similarities_are_refused_with_the_alternative():
    with pytest.raises(ValueError, match="cos_sim or dot_score"):
        ours.MultipleNegativesRankingLoss(_NoModel(), similarity_fct=util.manhattan_sim)


def test_labelled_losses_match_dcr_kernels():
    import dcr_kernels as dk

    class Embed(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["x"]}

    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 4, (20,))
    assert ours.SupConLoss(Embed(), temperature=0.2)([{"x": x}], y) == dk.supcon_loss(x, y, temperature=0.2)
    assert ours.CircleLoss(Embed(), margin=0.3, gamma=64)([{"x": x}], y) == dk.circle_loss(x, y, margin=0.3, gamma=64)
    assert ours.CircleLoss(Embed()).get_config_dict() == {"margin": 0.4, "gamma": 80.0}
    with pytest.raises(ValueError, match="one text column"):
        ours.SupConLoss(Embed())([{"x": x}, {"x": x}], y)


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        full = _columns(8 * world, 10, 3, seed=7)
        local = [c[8 * rank : 8 * (rank + 1)] for c in full]
        report = {}
        for i, settings in enumerate(SETTINGS):
            kw = dict(settings, gather_across_devices=True)
            got = _value_and_grads(ours.MultipleNegativesRankingLoss(_NoModel(), **kw), local)
            want = _value_and_grads(losses.MultipleNegativesRankingLoss(_NoModel(), **kw), local)
            report[i] = (got, want)
        torch.save(report, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()  # both ranks' collectives are done before the group is torn down
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_across_devices_like_the_library():
    reports = rank_reports(_worker, 2)
    for report in reports:
        for got, want in report.values():
            torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
            for g, w in zip(got[1], want[1], strict=True):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def _train(loss_cls, folder: str) -> dict[str, torch.Tensor]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    torch.manual_seed(0)
    model = SentenceTransformer(minilm_dir(), device="cpu")
    pairs = [(f"How do I {v} a {n}?", f"Steps to {v} the {n} safely.") for v in ("kill", "stop", "start", "fix")
             for n in ("Python process", "car engine", "cron job", "stuck download")]  # fmt: skip
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    args = SentenceTransformerTrainingArguments(
        output_dir=folder, per_device_train_batch_size=8, max_steps=3, learning_rate=5e-5, seed=0,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    loss = loss_cls(model, mini_batch_size=3)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trainer_learns_the_same_weights_as_the_library(tmp_path):
    """Three Adam steps of SentenceTransformerTrainer with each cached loss: the weight updates agree to
    fp32 rounding (Adam divides by the gradients' running RMS, so entries with near-zero gradients can
    differ by a step of lr; the update as a whole is compared)."""
    from sentence_transformers import SentenceTransformer

    base = {k: v.clone() for k, v in SentenceTransformer(minilm_dir(), device="cpu").state_dict().items()}
    ours_weights = _train(ours.CachedMultipleNegativesRankingLoss, str(tmp_path / "ours"))
    theirs_weights = _train(losses.CachedMultipleNegativesRankingLoss, str(tmp_path / "theirs"))
    ours_step = torch.cat([(ours_weights[k] - base[k]).flatten() for k in base])
    theirs_step = torch.cat([(theirs_weights[k] - base[k]).flatten() for k in base])
    assert float(theirs_step.norm()) > 0
    assert float((ours_step - theirs_step).norm() / theirs_step.norm()) < 1e-3
    assert float((ours_step - theirs_step).abs().max()) <= 1.5e-4  # at most one Adam step of lr 5e-5 apart
