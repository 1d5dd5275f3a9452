"""Tune the Triton kernels once, ahead of training: ``python -m dcr_kernels.tune --batch 4096 --dim 768``.

Runs the forward and backward of each named loss at each batch size on the current GPU, so that every
launch those shapes make is timed over its configs and the choice lands in the tuning cache
(`dcr_kernels.backends.triton.tuning`): later processes, and every rank of a run, read it instead of tuning.
Batches of the same size bucket share a choice, so the training batch size (and, under torch.distributed,
the global batch as the kernels see it: rows of one rank against the keys of all) is what to pass.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import functional as F
from .backends.triton import tuning

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LOSSES = ("info_nce", "clip", "supcon", "circle")


def _step(loss: str, rows: int, keys: int, dim: int, dtype: torch.dtype, classes: int) -> None:
    x = torch.randn(rows, dim, device="cuda", dtype=dtype, requires_grad=True)
    labels = torch.randint(0, classes, (rows,), device="cuda")
    if loss == "info_nce":
        k = torch.randn(keys, dim, device="cuda", dtype=dtype, requires_grad=True)
        out = F.info_nce(x, k, backend="triton")
    elif loss == "clip":
        out = F.info_nce(x, torch.randn_like(x), symmetric=True, backend="triton")
    elif loss == "supcon":
        out = F.supcon_loss(x, labels, backend="triton")
    else:
        out = F.circle_loss(x, labels, backend="triton")
    out.backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", required=True, help="rows per call (one or more)")
    parser.add_argument("--dim", type=int, nargs="+", required=True, help="embedding dimension(s)")
    parser.add_argument("--keys", type=int, default=None, help="key rows of info_nce (default: the batch)")
    parser.add_argument("--dtype", choices=DTYPES, nargs="+", default=["bf16"])
    parser.add_argument("--losses", choices=LOSSES, nargs="+", default=list(LOSSES))
    parser.add_argument("--classes", type=int, default=8, help="labels drawn for supcon and circle")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("tuning times the kernels on a CUDA GPU, and none is visible (CUDA_VISIBLE_DEVICES?)")
    if tuning.deterministic():
        parser.error("deterministic mode runs fixed configs; unset DCR_DETERMINISTIC to tune")
    device_name = torch.cuda.get_device_name()
    cache = tuning.cache_for(device_name)
    before = dict(cache.choices)
    start = time.perf_counter()
    for dtype in args.dtype:
        for dim in args.dim:
            for rows in args.batch:
                for loss in args.losses:
                    _step(loss, rows, args.keys or rows, dim, DTYPES[dtype], args.classes)
                    torch.cuda.synchronize()
    added = {k: v for k, v in cache.choices.items() if before.get(k) != v}
    for key, index in sorted(added.items()):
        print(f"{key}: config {index}")
    print(
        f"{len(added)} new choices ({len(cache.choices)} in all) for {device_name} in "
        f"{time.perf_counter() - start:.1f} s; cache {cache.path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
