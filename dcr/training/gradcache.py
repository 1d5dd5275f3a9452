"""One contrastive step with gradient caching (Gao et al., 2021), so the batch size is not bounded by
activation memory.

Pass 1 embeds every micro-batch without gradients, recording the RNG state first. The loss over all
embeddings is then differentiated only down to the embeddings. Pass 2 re-runs each micro-batch with
gradients under its recorded RNG state (same dropout masks) and backpropagates the cached embedding
gradient. Parameter gradients equal those of one forward/backward over the whole batch; peak activation
memory is that of one micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from dcr.training import rng
from dcr_kernels import ContrastiveOutput

Batch = TypeVar("Batch")


def contrastive_backward(
    embed: Callable[[Batch], torch.Tensor],
    micro_batches: Sequence[Batch],
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], ContrastiveOutput],
    *,
    cache: bool = True,
) -> tuple[ContrastiveOutput, torch.Tensor]:
    """Accumulate parameter gradients of the loss over the concatenated micro-batches.

    Returns the loss output and the detached fp32 embeddings. With ``cache=False`` every micro-batch keeps
    its activations and one ordinary backward runs (the reference the cached path must match).
    """
    if not cache:
        embeddings = torch.cat([embed(b) for b in micro_batches]).float()
        out = loss_fn(embeddings, labels)
        out.loss.backward()
        return out, embeddings.detach()
    states, parts = [], []
    with torch.no_grad():
        for b in micro_batches:
            states.append(rng.capture())
            parts.append(embed(b))
    embeddings = torch.cat(parts).float().requires_grad_()
    out = loss_fn(embeddings, labels)
    (grad,) = torch.autograd.grad(out.loss, embeddings)
    for b, state, g in zip(micro_batches, states, grad.split([len(p) for p in parts]), strict=True):
        with rng.replay(state):
            rep = embed(b)
        rep.float().backward(g)
    return out, embeddings.detach()
