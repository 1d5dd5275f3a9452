"""Time and peak memory of every provider over a range of batch sizes, as JSON.

For each dim, batch size (ascending), loss and mode, the providers are measured one after another, in
`--rounds` rounds with the order rotated each round, so that drift on a shared machine hits them all
alike. With `--isolate subprocess` (the default on CPU) every measurement runs in a fresh process: the
memory in one (a single call, with glibc's mmap threshold pinned so that freed buffers go back to the
kernel and the resident peak tracks live buffers, not heap fragmentation), the time in another (default
allocator, warm-up then repeats). On CUDA the default is in-process: the allocator's peak counter is
exact there and a fresh CUDA context per measurement would cost more than the measurements.
A provider that fails (out of memory, timeout) at some size is not tried at larger ones. Results are
rewritten after every measurement, so a run stopped by `--time-limit` keeps what it measured.

    python benchmarks/sweep.py --device cuda --dtype bfloat16 --sizes 4096,16384,65536 --dims 256,1024 \\
        --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import memory as memory_method
import probe
import providers
import torch

GIB = 1 << 30
DEFAULT_PROVIDERS = ("chunked", "triton", "dense", "gradcache", "pml", "inf-cl")
MEMORY_FIELDS = ("inputs_bytes", "extra_bytes", "step_bytes")


def _csv(kind: type) -> Callable[[str], tuple]:
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def _measure(args: argparse.Namespace, loss: str, provider: str, batch: int, dim: int, mode: str, memory: bool) -> dict:
    """One timing run of a configuration, preceded (if `memory`) by its memory run."""
    common = (loss, provider, batch, dim, args.dtype, args.device, mode)
    if args.isolate == "none":
        return probe.measure(*common, warmup=args.warmup, repeats=args.repeats)
    kw = dict(
        cap_bytes=int(args.cap_gib * GIB) if args.cap_gib else None, timeout_s=args.probe_timeout, threads=args.threads
    )
    mem = {}
    if memory:
        mem = probe.spawn(*common, warmup=0, repeats=0, env=memory_method.MEASURE_ENV, **kw)
        if not mem.get("ok"):
            return mem
    timed = probe.spawn(*common, warmup=args.warmup, repeats=args.repeats, **kw)
    return {**timed, **{k: mem[k] for k in MEMORY_FIELDS if k in mem}}


def _merge(rows: list[dict]) -> dict:
    """One result from the rounds of a configuration: memory of the first, all times pooled."""
    failed = next((r for r in rows if not r.get("ok")), None)
    if failed:
        return failed
    times = [t for r in rows for t in r["times_s"]]
    return {**rows[0], "times_s": times, "median_s": statistics.median(times) if times else None}


def run(args: argparse.Namespace) -> dict:
    """Measure every configuration of `args`, rewriting `args.out` as rows come in."""
    doc = {
        "machine": probe.machine(torch.device(args.device)),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "memory": "peak above inputs and their gradients (CPU: resident set; CUDA: allocated tensors)",
        "rows": [],
        "truncated": False,
    }
    if args.threads and args.isolate == "none":
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    dropped: set[tuple] = set()  # (loss, provider, dim, mode) that failed or cannot run
    for dim, batch, loss, mode in itertools.product(args.dims, args.sizes, args.losses, args.modes):
        names = [p for p in args.providers if providers.supports(p, loss) and (loss, p, dim, mode) not in dropped]
        results: dict[str, list[dict]] = {p: [] for p in names}
        for r in range(args.rounds):
            for provider in names[r % len(names) :] + names[: r % len(names)]:
                if results[provider] and not results[provider][-1].get("ok"):
                    continue
                if args.time_limit and time.monotonic() - start > args.time_limit:
                    doc["truncated"] = True
                    return doc
                res = _measure(args, loss, provider, batch, dim, mode, memory=r == 0)
                results[provider].append(res)
                brief = {k: res.get(k) for k in ("median_s", "extra_bytes", "error")}
                print(
                    json.dumps({"loss": loss, "provider": provider, "batch": batch, "dim": dim, "mode": mode, **brief}),
                    flush=True,
                )
        for provider, rows in results.items():
            res = _merge(rows)
            if not res["ok"]:
                dropped.add((loss, provider, dim, mode))
            doc["rows"].append(
                {
                    "loss": loss,
                    "provider": provider,
                    "mode": mode,
                    "batch": batch,
                    "dim": dim,
                    "dtype": args.dtype,
                    "device": args.device,
                    **res,
                }
            )
        _write(doc, args.out)
    return doc


def _write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--sizes", type=_csv(int), default=(1024, 2048, 4096, 8192, 16384))
    p.add_argument("--dims", type=_csv(int), default=(256, 1024))
    p.add_argument("--losses", type=_csv(str), default=providers.LOSSES)
    p.add_argument("--providers", type=_csv(str), default=DEFAULT_PROVIDERS)
    p.add_argument("--modes", type=_csv(str), default=probe.MODES)
    p.add_argument("--rounds", type=int, default=1, help="timing runs per configuration, providers interleaved")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--isolate", choices=("auto", "subprocess", "none"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads of each measurement (default: torch's choice)")
    p.add_argument("--cap-gib", type=float, default=11.0, help="CPU subprocesses: fail beyond this much memory")
    p.add_argument("--probe-timeout", type=float, default=600.0, help="seconds per subprocess measurement")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; stop starting measurements after")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.isolate == "auto":
        args.isolate = "none" if args.device.startswith("cuda") else "subprocess"
    unknown = set(args.providers) - set(providers.PROVIDERS) | set(args.losses) - set(providers.LOSSES)
    if unknown:
        p.error(f"unknown providers or losses: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    doc = run(args)
    _write(doc, args.out)
    print(f"{len(doc['rows'])} rows -> {args.out}" + (" (stopped by --time-limit)" if doc["truncated"] else ""))


if __name__ == "__main__":
    main()
