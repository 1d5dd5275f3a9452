"""OpenCLIP's `ClipLoss` on the fused InfoNCE: swap the class in an OpenCLIP training script.

    from dcr_kernels.integrations.open_clip import ClipLoss   # was: from open_clip.loss import ClipLoss

Same constructor (`local_loss`, `gather_with_grad`, `cache_labels`, `rank`, `world_size`) and call
(`forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)`, features
already normalised, `logit_scale` already exponentiated and learnable). The loss is the mean of the
image-to-text and text-to-image cross-entropies, computed by the fused kernels without the B x B logits.

Across ranks the features are gathered as OpenCLIP gathers them, so values and gradients are OpenCLIP's:
- `local_loss=True`: each rank scores its own rows against every rank's features (the positive of local
  row i is global row rank * B + i) and reports the mean over its rows. With `gather_with_grad=True` the
  gathered features carry gradients back to their ranks; without it only the local rows do.
- `local_loss=False`: each rank computes the global loss, with its own features (which carry the
  gradient) in place of its gathered slice.
`logit_bias` shifts every logit by the same amount, which a softmax cross-entropy does not see: it is
accepted (with a zero gradient, as in OpenCLIP) and has no effect. Horovod is not supported.

`SigLipLoss` is OpenCLIP's sigmoid loss on `dcr_kernels.sigmoid_loss` (no B x B logits): same constructor
(`cache_labels`, `rank`, `world_size`, `dist_impl`) and call (`forward(image_features, text_features,
logit_scale, logit_bias, output_dict=False)`). Across ranks the text features travel around a ring of
neighbours (`dcr_kernels.distributed.sigmoid_rows`): each rank scores its images against every rank's texts
block by block, holding O(local B x D), and each text's gradient returns to its rank summed over ranks. That
is the loss and the gradients of each of OpenCLIP's exchange patterns (bidir, shift, reduce, gather), which
differ only in how they move the texts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import Tensor, nn

from .. import functional as F
from ..distributed import sigmoid_rows


def _gather(x: Tensor, with_grad: bool, world_size: int) -> list[Tensor]:
    if with_grad:
        return list(dist_nn.all_gather(x))
    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return parts


class ClipLoss(nn.Module):
    """OpenCLIP's `ClipLoss` (symmetric InfoNCE with a learnable logit scale) on the fused loss."""

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if use_horovod:
            raise ValueError("ClipLoss: horovod is not supported; launch with torchrun (torch.distributed)")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        temperature = 1.0 / logit_scale
        kw = dict(temperature=temperature, normalize=False, backend=self.backend)
        if self.world_size == 1:
            loss = F.info_nce(image_features, text_features, symmetric=True, **kw)
        else:
            images = _gather(image_features, self.gather_with_grad, self.world_size)
            texts = _gather(text_features, self.gather_with_grad, self.world_size)
            if self.local_loss:
                b = image_features.shape[0]
                positive = torch.arange(b, device=image_features.device) + b * self.rank
                all_images, all_texts = torch.cat(images), torch.cat(texts)
                loss = 0.5 * (
                    F.info_nce(image_features, all_texts, positive=positive, **kw)
                    + F.info_nce(text_features, all_images, positive=positive, **kw)
                )
            else:
                if not self.gather_with_grad:
                    images[self.rank], texts[self.rank] = image_features, text_features
                loss = F.info_nce(torch.cat(images), torch.cat(texts), symmetric=True, **kw)
        if logit_bias is not None:
            loss = loss + 0 * logit_bias.sum()
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(nn.Module):
    """OpenCLIP's `SigLipLoss` (pairwise sigmoid, learnable scale and bias) on the fused sigmoid loss."""

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in ("bidir", "shift", "reduce", "gather"):
            raise ValueError(f"SigLipLoss: dist_impl must be bidir, shift, reduce or gather, got {dist_impl!r}")
        self.cache_labels, self.rank, self.world_size, self.dist_impl = cache_labels, rank, world_size, dist_impl
        self.backend = backend

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        kw = dict(scale=logit_scale, bias=0.0 if logit_bias is None else logit_bias, normalize=False)
        b = image_features.shape[0]
        if self.world_size == 1:
            loss = F.sigmoid_loss(image_features, text_features, backend=self.backend, **kw)
        else:
            positive = torch.arange(b, device=image_features.device) + b * self.rank
            rows = sigmoid_rows(image_features, text_features, positive, kw["scale"], kw["bias"], backend=self.backend)
            loss = rows.sum() / b
        return {"contrastive_loss": loss} if output_dict else loss
