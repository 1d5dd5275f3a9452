"""Drop-in replacements for the contrastive losses of the libraries people train with, on the fused losses.

Each module mirrors one library's classes and call signatures and imports that library only when it is
used, so none is a dependency of `dcr_kernels`:

- `pml`: pytorch-metric-learning's `CircleLoss` and `SupConLoss`.
- `open_clip`: OpenCLIP's `ClipLoss` (learnable logit scale, local and gathered losses across ranks).
- `sentence_transformers`: `MultipleNegativesRankingLoss`, its symmetric and cached forms, and labelled
  `SupConLoss` / `CircleLoss` for `SentenceTransformerTrainer`.
"""
