"""One measurement of one provider: peak memory and median time of a loss step, as one JSON line.

Run as a script, it measures in a process of its own; `spawn` starts such a process and reads its line.
The sweep, the budget search and memory.py all go through `spawn` on CPU, so that no measurement
inherits the memory pages or caches of another. `measure` is the same measurement in the calling
process (the sweep's default on CUDA, where the allocator's peak counter does not need a fresh process).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import memory
import providers
import timing
import torch

MODES = ("fwd", "fwd_bwd")


def measure(
    loss: str,
    provider: str,
    batch: int,
    dim: int,
    dtype: str,
    device: str,
    mode: str,
    warmup: int = 1,
    repeats: int = 5,
) -> dict:
    """Peak memory of the first call, then times of `repeats` calls; the first call counts as one of the
    `warmup` untimed calls.

    Returns ok, inputs_bytes (inputs, plus gradients for fwd_bwd), extra_bytes (the peak above those),
    step_bytes (their sum: what the step needs beyond the PyTorch runtime), times_s and median_s; or ok
    False with the error (out of memory, provider unavailable)."""
    dev = torch.device(device)
    try:
        step = providers.step(loss, provider, dev)
    except providers.Unavailable as e:
        return {"ok": False, "skipped": True, "error": str(e)}
    _warm_runtime(step, loss, dim, dtype, dev)
    runtime = memory.current_bytes(dev)
    try:
        return _measure_step(
            step, providers.make_batch(loss, batch, dim, getattr(torch, dtype), dev), mode, warmup, repeats, runtime
        )
    except (RuntimeError, MemoryError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _warm_runtime(step: providers.Step, loss: str, dim: int, dtype: str, dev: torch.device) -> None:
    """One tiny step of both kinds first, so that thread pools, the autograd engine and library handles
    (tens of MB, once per process) are not counted as the memory of the measured step."""
    b = providers.make_batch(loss, 64, dim, getattr(torch, dtype), dev)
    step.forward(b)
    step.forward_backward(b)


def _measure_step(step: providers.Step, b: providers.Batch, mode: str, warmup: int, repeats: int, runtime: int):
    dev = b.query.device
    run = (lambda: step.forward(b)) if mode == "fwd" else (lambda: step.forward_backward(b))
    mem = memory.peak_above_inputs(run, b, with_grads=mode == "fwd_bwd")

    def reset() -> None:
        for x in b.inputs():
            x.grad = None

    ts = timing.times(run, dev, max(0, warmup - 1), repeats, reset)
    inputs = mem["baseline_bytes"] - runtime
    return {
        "ok": True,
        "inputs_bytes": inputs,
        "extra_bytes": mem["extra_bytes"],
        "step_bytes": inputs + mem["extra_bytes"],
        "times_s": ts,
        "median_s": timing.median(ts),
        "threads": torch.get_num_threads(),
    }


def _cap_address_space(cap_bytes: int) -> None:
    """A safety stop: the process may map at most `cap_bytes` more than it has mapped now (CPU)."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap_bytes, vm + cap_bytes))


def spawn(
    loss: str,
    provider: str,
    batch: int,
    dim: int,
    dtype: str,
    device: str,
    mode: str,
    warmup: int = 1,
    repeats: int = 5,
    cap_bytes: int | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    threads: int | None = None,
) -> dict:
    """`measure` in a fresh Python process (with `env` added to its environment); a crash or a timeout
    comes back as ok False."""
    cmd = [sys.executable, str(Path(__file__).resolve()), loss, provider, str(batch), str(dim), dtype, device, mode]
    cmd += ["--warmup", str(warmup), "--repeats", str(repeats)]
    if cap_bytes:
        cmd += ["--cap-bytes", str(cap_bytes)]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout_s} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    return {"ok": False, "error": f"exit {proc.returncode}: {tail}"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "triton", "pytorch-metric-learning", "inf-cl")},
        "commit": commit.stdout.strip() or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one provider's loss step in this process.")
    parser.add_argument("loss", choices=providers.LOSSES)
    parser.add_argument("provider", choices=providers.PROVIDERS)
    parser.add_argument("batch", type=int)
    parser.add_argument("dim", type=int)
    parser.add_argument("dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("device")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cap-bytes", type=int, help="CPU: fail any allocation beyond this much more memory")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cap_bytes and args.device == "cpu":
        _cap_address_space(args.cap_bytes)
    res = measure(
        args.loss, args.provider, args.batch, args.dim, args.dtype, args.device, args.mode, args.warmup, args.repeats
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
