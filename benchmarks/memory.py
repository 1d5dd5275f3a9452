"""Peak memory of one loss step above its inputs and their gradients, on CPU or CUDA.

CPU: the process's resident set. The inputs are built and buffers of their gradients' size are touched,
so the baseline RSS holds both; the buffers are then freed, the kernel's peak-RSS mark is reset to the
current RSS (`/proc/self/clear_refs`, value 5) and the step runs; the extra is VmHWM minus the baseline.
This counts every byte the step makes resident (tensors, allocator slack, BLAS workspaces), not only
tensors, and needs a fresh process so that earlier steps leave no cached pages behind.
CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, with the same baseline.

Run as a script, it measures the chunked backend against the dense reference at B = 16384, D = 256
(forward plus backward, float32, CPU), each in a fresh subprocess, and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import providers
import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def current_bytes(device: torch.device) -> int:
    """Memory in use now: resident set (CPU) or allocated tensors (CUDA)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_kib("VmRSS") * 1024


def reset_peak(device: torch.device) -> None:
    """Start a new peak measurement from the current usage."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_bytes(device: torch.device) -> int:
    """Highest usage since `reset_peak`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


def peak_above_inputs(run: Callable[[], object], batch: providers.Batch, with_grads: bool) -> dict[str, int]:
    """Run `run` once; return the baseline (inputs and, if `with_grads`, gradient-sized buffers, both
    touched) and the peak above it, in bytes."""
    device = batch.query.device
    grads = [torch.ones_like(x) for x in batch.inputs()] if with_grads else []
    baseline = current_bytes(device)
    del grads
    reset_peak(device)
    run()
    return {"baseline_bytes": baseline, "extra_bytes": peak_bytes(device) - baseline}


def main() -> None:
    import probe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[-1])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_cpu.json")
    args = parser.parse_args()
    rows = []
    for loss in providers.LOSSES:
        for provider in ("chunked", "reference"):
            res = probe.spawn(loss, provider, args.batch, args.dim, "float32", "cpu", "fwd_bwd", warmup=0, repeats=0)
            rows.append({"loss": loss, "provider": provider, **res})
            print(json.dumps(rows[-1]), file=sys.stderr)
    by = {(r["loss"], r["provider"]): r for r in rows}
    ratios = {
        loss: by[(loss, "chunked")]["extra_bytes"] / by[(loss, "reference")]["extra_bytes"]
        for loss in providers.LOSSES
        if by[(loss, "chunked")].get("ok") and by[(loss, "reference")].get("ok")
    }
    doc = {
        "what": "peak memory above inputs and gradients, forward+backward, one fresh process per row",
        "batch": args.batch,
        "dim": args.dim,
        "dtype": "float32",
        "machine": probe.machine(torch.device("cpu")),
        "rows": rows,
        "chunked_over_reference": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for loss, r in ratios.items():
        print(f"{loss}: chunked / reference = {r:.4f} (1/{1 / r:.0f})")


if __name__ == "__main__":
    main()
