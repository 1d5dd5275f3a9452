"""The baselines users would write themselves: eager dense losses and a GradCache-style chunked loss.

Eager dense: the whole B x B similarity matrix and plain autograd, as CLIP / sentence-transformers'
MultipleNegativesRankingLoss (cross-entropy) and the usual SupCon and Circle recipes compute them. Logits
are formed in the input dtype and the softmax runs in fp32, as under autocast.

GradCache: sentence-transformers' CachedMultipleNegativesRankingLoss. The embeddings are detached, the
loss is computed in row mini-batches (cosine scores of the mini-batch against all candidates) and each
mini-batch is backpropagated at once, which caches d loss / d embedding; those cached gradients are then
pushed into the caller's graph (where the library re-embeds each mini-batch with gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GRADCACHE_MINI_BATCH = 32  # CachedMultipleNegativesRankingLoss's default


def _fp32(x: Tensor) -> Tensor:
    """Half-precision logits go to fp32 for the softmax, as autocast does; fp32 and fp64 stay."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def dense_info_nce(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of each query over all keys, the positive of query i being key i."""
    logits = F.normalize(query, dim=-1) @ F.normalize(key, dim=-1).T
    targets = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(_fp32(logits) / temperature, targets)


def dense_supcon(embeddings: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """SupCon (L_out): mean log-probability of the positives, self excluded, over rows with a positive."""
    x = F.normalize(embeddings, dim=-1)
    self_pair = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    logits = _fp32(x @ x.T).div(temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits.log_softmax(dim=1)
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    n_pos = positive.sum(dim=1)
    rows = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / n_pos.clamp(min=1)
    return rows[n_pos > 0].mean()


def dense_circle(embeddings: Tensor, labels: Tensor, margin: float, gamma: float) -> Tensor:
    """Circle loss with detached alpha weights, mean over rows with a positive and a negative."""
    x = F.normalize(embeddings, dim=-1)
    sim = _fp32(x @ x.T)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    alpha_p = torch.relu(1.0 + margin - sim.detach())
    alpha_n = torch.relu(sim.detach() + margin)
    logit_p = (-gamma * alpha_p * (sim - (1.0 - margin))).masked_fill(~positive, float("-inf"))
    logit_n = (gamma * alpha_n * (sim - margin)).masked_fill(same, float("-inf"))
    total = torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1)
    counted = torch.isfinite(total)
    return F.softplus(total[counted]).mean()


def gradcache_info_nce(
    query: Tensor, key: Tensor, temperature: float, backward: bool, mini_batch: int = GRADCACHE_MINI_BATCH
) -> Tensor:
    """The cross-entropy of `dense_info_nce`, computed (and, if `backward`, backpropagated) per mini-batch."""
    q = query.detach().requires_grad_(backward)
    k = key.detach().requires_grad_(backward)
    targets = torch.arange(q.shape[0], device=q.device)
    total = torch.zeros((), dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    for r0 in range(0, q.shape[0], mini_batch):
        with torch.set_grad_enabled(backward):
            scores = F.normalize(q[r0 : r0 + mini_batch], dim=-1) @ F.normalize(k, dim=-1).T
            loss = F.cross_entropy(_fp32(scores) / temperature, targets[r0 : r0 + mini_batch], reduction="sum")
            loss = loss / q.shape[0]
            if backward:
                loss.backward()
        total += loss.detach()
    if backward:
        torch.autograd.backward([query, key], [q.grad, k.grad])
    return total
