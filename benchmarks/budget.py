"""The largest batch each provider handles within a memory budget, found by bisection.

A batch size passes when one forward+backward step, run in a fresh subprocess, completes and its
measured peak memory for inputs, gradients and temporaries (`step_bytes`: everything above the PyTorch
runtime of that process) is within the budget. On CPU each probe also runs under RLIMIT_AS set to the
budget plus a margin above what the process had mapped before the step, so a provider far over budget
fails fast instead of taking the machine's memory; the verdict is the measured peak. The search
doubles from `--start` until a probe fails, then bisects to `--resolution`. A probe that times out, or
reaching `--max-batch`, ends the search with a lower bound (`bound` says why).

    python benchmarks/budget.py --budget-gib 8 --dim 256 --losses info_nce --providers dense,chunked \\
        --out benchmarks/results/budget_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import memory
import probe
import providers
import torch

GIB = 1 << 30
# how running out of memory shows: an allocator's error, or the process killed (SIGKILL) or aborted
OOM_SIGNS = ("can't allocate memory", "out of memory", "MemoryError", "std::bad_alloc", "exit -9", "exit -6")


def largest_batch(
    fits: Callable[[int], str], start: int, max_batch: int, resolution: float, multiple: int = 256
) -> dict:
    """Bisect on `fits(batch)`, which answers "ok", "over" (memory), "timeout" or "error".

    Returns largest (the largest passing batch, 0 if none), smallest_failing (or None) and bound: "memory"
    when the two bracket the limit within `resolution` (relative), else why the search stopped early
    ("timeout", "error" or "max-batch"); then `largest` is only a lower bound."""
    lo, hi, batch = 0, None, start
    while batch <= max_batch:
        verdict = fits(batch)
        if verdict in ("timeout", "error"):
            return {"largest": lo, "smallest_failing": None, "bound": verdict}
        if verdict == "over":
            hi = batch
            break
        lo, batch = batch, batch * 2
    if hi is None:
        return {"largest": lo, "smallest_failing": None, "bound": "max-batch"}
    while lo and hi - lo > max(multiple, resolution * lo):
        mid = (lo + hi) // 2 // multiple * multiple
        if mid in (lo, hi):
            break
        verdict = fits(mid)
        if verdict in ("timeout", "error"):
            return {"largest": lo, "smallest_failing": hi, "bound": verdict}
        lo, hi = (mid, hi) if verdict == "ok" else (lo, mid)
    return {"largest": lo, "smallest_failing": hi, "bound": "memory"}


def _prober(args: argparse.Namespace, loss: str, provider: str, log: list[dict]) -> Callable[[int], str]:
    budget = int(args.budget_gib * GIB)

    def fits(batch: int) -> str:
        t0 = time.monotonic()
        res = probe.spawn(
            loss,
            provider,
            batch,
            args.dim,
            args.dtype,
            args.device,
            "fwd_bwd",
            warmup=0,
            repeats=0,
            cap_bytes=budget + int(args.margin_gib * GIB),
            timeout_s=args.probe_timeout,
            env=memory.MEASURE_ENV,
        )
        error = res.get("error", "")
        if res.get("ok"):
            verdict = "ok" if res["step_bytes"] <= budget else "over"
        elif error.startswith("timeout"):
            verdict = "timeout"
        else:
            verdict = "over" if any(m in error for m in OOM_SIGNS) else "error"
        log.append(
            {
                "batch": batch,
                "verdict": verdict,
                "seconds": round(time.monotonic() - t0, 1),
                **{k: res.get(k) for k in ("step_bytes", "error")},
            }
        )
        print(json.dumps({"loss": loss, "provider": provider, **log[-1]}), flush=True)
        return verdict

    return fits


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget-gib", type=float, default=8.0)
    p.add_argument("--margin-gib", type=float, default=1.0, help="CPU: RLIMIT_AS slack above the budget")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--losses", type=lambda s: s.split(","), default=list(providers.LOSSES))
    p.add_argument("--providers", type=lambda s: s.split(","), default=["chunked", "dense", "gradcache", "pml"])
    p.add_argument("--start", type=int, default=4096)
    p.add_argument("--max-batch", type=int, default=1 << 20)
    p.add_argument("--resolution", type=float, default=0.05, help="stop when the bracket is this tight")
    p.add_argument("--probe-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    measured = {(loss, provider) for loss in args.losses for provider in args.providers}
    doc = {
        "machine": probe.machine(torch.device(args.device)),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "criterion": "step_bytes (inputs + gradients + peak extra) <= budget",
        "rows": [],
    }
    if args.out.exists():  # keep earlier searches of other providers, dims or budgets
        kept = json.loads(args.out.read_text())["rows"]
        doc["rows"] = [r for r in kept if not _same_search(r, args) or (r["loss"], r["provider"]) not in measured]
    for loss, provider in sorted(measured, key=lambda x: (providers.LOSSES.index(x[0]), x[1])):
        try:
            providers.step(loss, provider, torch.device(args.device))
        except providers.Unavailable:
            continue
        log: list[dict] = []
        found = largest_batch(_prober(args, loss, provider, log), args.start, args.max_batch, args.resolution)
        doc["rows"].append(
            {
                "loss": loss,
                "provider": provider,
                "dim": args.dim,
                "dtype": args.dtype,
                "device": args.device,
                "budget_bytes": int(args.budget_gib * GIB),
                **found,
                "probes": log,
            }
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


def _same_search(row: dict, args: argparse.Namespace) -> bool:
    return (row["dim"], row["dtype"], row["device"], row["budget_bytes"]) == (
        args.dim,
        args.dtype,
        args.device,
        int(args.budget_gib * GIB),
    )


if __name__ == "__main__":
    main()
