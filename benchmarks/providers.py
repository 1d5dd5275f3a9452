"""Who computes each loss in the benchmarks: our backends and the peers, behind one small interface.

Losses (like with like): `info_nce` is the cross-mode InfoNCE of B queries against B keys, the
CLIP / MultipleNegativesRanking cross-entropy; `supcon` and `circle` are self mode over B labelled
embeddings (4 per class). Providers: `chunked`, `reference`, `triton` (our backends), `dense` (eager
dense PyTorch), `gradcache` (GradCache-style chunked cross-entropy), `pml` (pytorch-metric-learning),
`inf-cl` (Inf-CL's `cal_inf_loss`, CUDA only). A provider that cannot run says why instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import baselines
import torch
import torch.nn.functional as F
from torch import Tensor

import dcr_kernels as dk
from dcr_kernels.backends import triton_available

LOSSES = ("info_nce", "supcon", "circle")
TEMPERATURE = {"info_nce": 0.07, "supcon": 0.1}
MARGIN, GAMMA = 0.4, 80.0
PER_CLASS = 4


@dataclass
class Batch:
    """Embeddings of one benchmark step: `query` (B x D), `key` (B x D, cross mode only), `labels`."""

    query: Tensor
    key: Tensor | None
    labels: Tensor | None

    def inputs(self) -> list[Tensor]:
        return [t for t in (self.query, self.key) if t is not None]


def make_batch(loss: str, batch: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Batch:
    """Random embeddings that require gradients (and labels for the labelled losses)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def emb() -> Tensor:
        return torch.randn(batch, dim, generator=gen, device=device, dtype=dtype).requires_grad_()

    if loss == "info_nce":
        return Batch(emb(), emb(), None)
    labels = torch.arange(batch, device=device) % max(1, batch // PER_CLASS)
    return Batch(emb(), None, labels)


def _ours(backend: str, loss: str) -> Callable[[Batch], Tensor]:
    if loss == "info_nce":
        return lambda b: dk.info_nce(b.query, b.key, temperature=TEMPERATURE[loss], backend=backend)
    if loss == "supcon":
        return lambda b: dk.supcon_loss(b.query, b.labels, temperature=TEMPERATURE[loss], backend=backend)
    return lambda b: dk.circle_loss(b.query, b.labels, margin=MARGIN, gamma=GAMMA, backend=backend)


def _dense(loss: str) -> Callable[[Batch], Tensor]:
    if loss == "info_nce":
        return lambda b: baselines.dense_info_nce(b.query, b.key, TEMPERATURE[loss])
    if loss == "supcon":
        return lambda b: baselines.dense_supcon(b.query, b.labels, TEMPERATURE[loss])
    return lambda b: baselines.dense_circle(b.query, b.labels, MARGIN, GAMMA)


def _pml(loss: str) -> Callable[[Batch], Tensor]:
    from pytorch_metric_learning import losses

    fn = (
        losses.SupConLoss(temperature=TEMPERATURE[loss])
        if loss == "supcon"
        else losses.CircleLoss(m=MARGIN, gamma=GAMMA)
    )
    return lambda b: fn(b.query, b.labels)


def _inf_cl(loss: str) -> Callable[[Batch], Tensor]:
    from inf_cl import cal_inf_loss

    def fn(b: Batch) -> Tensor:
        q, k = F.normalize(b.query, dim=-1), F.normalize(b.key, dim=-1)
        return cal_inf_loss(q, k, scale=1.0 / TEMPERATURE[loss])

    return fn


_LOSS_FNS: dict[str, Callable[[str], Callable[[Batch], Tensor]]] = {
    "chunked": lambda loss: _ours("chunked", loss),
    "reference": lambda loss: _ours("reference", loss),
    "triton": lambda loss: _ours("triton", loss),
    "dense": _dense,
    "pml": _pml,
    "inf-cl": _inf_cl,
}
PROVIDERS = ("chunked", "reference", "triton", "dense", "gradcache", "pml", "inf-cl")
_ONLY = {"gradcache": ("info_nce",), "inf-cl": ("info_nce",), "pml": ("supcon", "circle")}


def supports(provider: str, loss: str) -> bool:
    """Whether `provider` implements `loss` at all (on some device)."""
    return loss in _ONLY.get(provider, LOSSES)


class Unavailable(RuntimeError):
    """A provider that cannot run here (not installed, wrong device, loss not implemented)."""


def _unavailable(provider: str, device: torch.device) -> str | None:
    """Why `provider` cannot run on `device`, or None."""
    if provider == "triton":
        if device.type != "cuda":
            return "needs CUDA (the Triton interpreter is far too slow to benchmark)"
        if not triton_available():
            return "the Triton backend does not import"
    if provider == "inf-cl":
        if device.type != "cuda":
            return "CUDA only"
        if importlib.util.find_spec("inf_cl") is None:
            return "inf_cl is not installed"
    if provider == "pml" and importlib.util.find_spec("pytorch_metric_learning") is None:
        return "pytorch-metric-learning is not installed"
    return None


@dataclass(frozen=True)
class Step:
    """One provider's loss as the two benchmarked operations.

    `forward` is the loss without gradients (evaluation); `forward_backward` returns the loss and leaves
    the gradients of the embeddings in their `.grad`."""

    loss: str
    provider: str
    _forward: Callable[[Batch], Tensor]
    _forward_backward: Callable[[Batch], Tensor]

    def forward(self, batch: Batch) -> Tensor:
        with torch.no_grad():
            return self._forward(batch)

    def forward_backward(self, batch: Batch) -> Tensor:
        return self._forward_backward(batch)


def _backpropagated(fn: Callable[[Batch], Tensor]) -> Callable[[Batch], Tensor]:
    def run(b: Batch) -> Tensor:
        loss = fn(b)
        loss.backward()
        return loss.detach()

    return run


def step(loss: str, provider: str, device: torch.device) -> Step:
    """The benchmark step of `provider` for `loss`; raises `Unavailable` with the reason if it cannot run."""
    if loss not in LOSSES or provider not in PROVIDERS:
        raise ValueError(f"unknown loss {loss!r} or provider {provider!r}; losses {LOSSES}, providers {PROVIDERS}")
    if not supports(provider, loss):
        raise Unavailable(f"{provider} has no {loss}")
    reason = _unavailable(provider, device)
    if reason:
        raise Unavailable(f"{provider}: {reason}")
    if provider == "gradcache":
        t = TEMPERATURE[loss]
        return Step(
            loss,
            provider,
            lambda b: baselines.gradcache_info_nce(b.query, b.key, t, backward=False),
            lambda b: baselines.gradcache_info_nce(b.query, b.key, t, backward=True),
        )
    fn = _LOSS_FNS[provider](loss)
    return Step(loss, provider, fn, _backpropagated(fn))
