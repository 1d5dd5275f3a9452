"""Peak memory of one loss step above its inputs and their gradients, on CPU or CUDA.

CPU: the process's resident set. The inputs are built and buffers of their gradients' size are touched,
so the baseline RSS holds both; the buffers are then freed, the kernel's peak-RSS mark is reset to the
current RSS (`/proc/self/clear_refs`, value 5) and the step runs; the extra is VmHWM minus the baseline.
This counts every byte the step makes resident (tensors, allocator slack, BLAS workspaces), not only
tensors. It wants a fresh process (`MEASURE_ENV` set) so that no earlier step left pages behind: with
glibc's mmap threshold pinned, every buffer of 128 KiB or more is mapped on allocation and unmapped on
free, so the resident peak follows the live buffers rather than the heap's fragmentation history.
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

MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
GIB = 1 << 30


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


def chunked_over_reference(rows: list[dict], cap_bytes: int) -> dict[str, str]:
    """Per loss, the chunked backend's extra memory over the reference's, as text: "1/N", or "< 1/N"
    when the reference failed at the memory cap (its true figure is then above the cap)."""
    by = {(r["loss"], r["provider"]): r for r in rows}
    out = {}
    for loss in providers.LOSSES:
        ours, ref = by.get((loss, "chunked")), by.get((loss, "reference"))
        if not (ours and ours.get("ok") and ref):
            continue
        if ref.get("ok"):
            out[loss] = f"1/{ref['extra_bytes'] / ours['extra_bytes']:.0f}"
        elif "can't allocate memory" in ref.get("error", ""):
            out[loss] = (
                f"< 1/{cap_bytes / ours['extra_bytes']:.0f} (the reference failed at the {cap_bytes / GIB:g} GiB cap)"
            )
    return out


def main() -> None:
    import probe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[-1])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--cap-gib", type=float, default=11.0, help="fail (not swap) beyond this much memory")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_cpu.json")
    args = parser.parse_args()
    rows = []
    for loss in providers.LOSSES:
        for provider in ("chunked", "reference"):
            res = probe.spawn(
                loss,
                provider,
                args.batch,
                args.dim,
                "float32",
                "cpu",
                "fwd_bwd",
                warmup=0,
                repeats=0,
                cap_bytes=int(args.cap_gib * GIB),
                env=MEASURE_ENV,
            )
            rows.append({"loss": loss, "provider": provider, **res})
            print(json.dumps(rows[-1]), file=sys.stderr)
    ratios = chunked_over_reference(rows, int(args.cap_gib * GIB))
    doc = {
        "what": "peak memory above inputs and gradients, forward+backward, one fresh process per row",
        "method": __doc__.split("\n\n")[1],
        "batch": args.batch,
        "dim": args.dim,
        "dtype": "float32",
        "machine": probe.machine(torch.device("cpu")),
        "rows": rows,
        "cap_bytes": int(args.cap_gib * GIB),
        "chunked_over_reference": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for loss, r in ratios.items():
        print(f"{loss}: chunked / reference = {r}")


if __name__ == "__main__":
    main()
