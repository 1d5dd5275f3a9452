"""The losses across ranks on torch.distributed (NCCL on GPUs, gloo on CPU; torchrun or accelerate).

The global batch is the concatenation of every rank's rows in rank order; labels and positives may pair
rows of any ranks, and local batch sizes may differ. Two strategies compute the same numbers:
- "gather" (default): every rank's keys are all-gathered with autograd and each rank scores its local rows
  against all of them; memory O(global B x D) per rank, one all_gather forward and one all_reduce backward.
- "ring": key blocks move between neighbours with point-to-point sends while each rank merges its rows'
  statistics block by block (log-add-exp; the sigmoid loss adds), the next block in flight during the current
  block's compute;
  the backward sends each block's gradient around the ring with it; memory O(local B x D) per rank.

Gradient convention (docs/design.md, "Gradients across ranks"). With L the loss over the global batch (the mean over all
counted rows of all ranks, or their sum), each rank returns world_size * (its rows' share of L): under
DDP, which averages gradients over ranks, every gradient (the model's parameters, a learnable temperature
in the DDP module) equals the single-process gradient of L on the concatenated batch. Before averaging,
the gradient reaching a rank's embeddings is world_size * dL/d(its embeddings); without DDP, average the
parameters' gradients over ranks yourself (all_reduce, then divide by world_size). The returned tensor's
value is L itself on every rank (one small all_reduce), so it can be logged as is; `return_metrics=True`
adds global top-1 accuracy and row counts. Per-row weights are constants (no gradient reaches them).
Every rank must call the loss, and the backward, with the same options: the inputs' sizes, dims and
dtypes are compared first, so a mismatch raises the same error on every rank instead of a hang.
"""

from .functional import circle_loss, info_nce, sigmoid_loss, sigmoid_rows, supcon_loss
from .nn import CircleLoss, InfoNCELoss, SupConLoss

__all__ = [
    "CircleLoss",
    "InfoNCELoss",
    "SupConLoss",
    "circle_loss",
    "info_nce",
    "sigmoid_loss",
    "sigmoid_rows",
    "supcon_loss",
]
