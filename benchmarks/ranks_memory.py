"""Peak resident memory per rank of one DCR step over a large contrastive batch, on one process or
several (`torchrun --nproc_per_node=N benchmarks/ranks_memory.py OUT_DIR`): SmolLM2-135M-Instruct at layer
15, a 512-prompt class-balanced batch of the matched twins, gradient caching at micro-batch 16, the ring
strategy across ranks. Each rank prints one JSON line (its peak RSS includes the model, about 0.5 GB)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig


def main() -> None:
    out = sys.argv[1]
    config = RefineConfig(
        layer=15,
        batch_size=512,
        micro_batch_size=16,
        steps=1,
        max_length=128,
        save_every=0,
        strategy="ring",
        output_dir=out,
        progress=False,
    )
    began = time.perf_counter()
    refine(config)
    print(
        json.dumps(
            {
                "rank": int(os.environ.get("RANK", "0")),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "batch": config.batch_size,
                "micro_batch": config.micro_batch_size,
                "layer": config.layer,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "seconds": round(time.perf_counter() - began, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
