"""How the fused losses behave in the PyTorch runtime on a GPU (part of benchmarks/gpu_check.py):

- no host synchronisation: forward and backward of every loss with ``check_inputs=False`` under
  ``torch.cuda.set_sync_debug_mode("error")``;
- CUDA graphs: one training step (forward + backward) captured and replayed, equal to eager;
- deterministic mode: two processes with ``DCR_DETERMINISTIC=1`` give bit-identical losses and gradients;
- the tuning cache: a first process tunes and writes the cache, a second one finds every choice there
  (no new entry) and its first call is faster;
- the cost of the input checks: milliseconds per call with and without ``check_inputs``.

    python benchmarks/gpu_runtime_check.py  # prints the JSON gpu_check.py stores under "runtime"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dcr_kernels as dk

ROOT = Path(__file__).resolve().parents[1]
B, D, CLASSES = 4096, 768, 64


def _inputs(device: torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(B, D, device=device, dtype=dtype, generator=gen).requires_grad_()
    labels = torch.randint(0, CLASSES, (B,), device=device, generator=gen)
    return x, labels


def _step(x: torch.Tensor, labels: torch.Tensor, check_inputs: bool) -> torch.Tensor:
    kw = dict(backend="triton", check_inputs=check_inputs)
    half = x.shape[0] // 2
    loss = (
        dk.circle_loss(x, labels, **kw)
        + dk.supcon_loss(x, labels, **kw)
        + dk.info_nce(x, **kw)
        + dk.info_nce(x[:half], x[half:], symmetric=True, **kw)
    )
    loss.backward()
    return loss


def sync_free(device: torch.device) -> dict:
    x, labels = _inputs(device)
    _step(x, labels, False)  # compile and tune first: tuning times configs with synchronisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(x, labels, False)
        return {"ok": True}
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def graph_capture(device: torch.device) -> dict:
    x, labels = _inputs(device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on a side stream, as CUDA graphs require
            x.grad = None
            _step(x, labels, False)
    torch.cuda.current_stream().wait_stream(stream)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            loss = _step(x, labels, False)
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0]}
    graph.replay()
    torch.cuda.synchronize()
    captured_loss, captured_grad = loss.detach().clone(), x.grad.detach().clone()
    x.grad = None
    eager = _step(x, labels, False)
    return {
        "ok": True,
        "loss_rel_diff": float(((captured_loss - eager) / eager).abs()),
        "grad_rel_diff": float((captured_grad.float() - x.grad.float()).norm() / x.grad.float().norm()),
    }


_DIGEST = """
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
from gpu_runtime_check import _inputs, _step
x, labels = _inputs(torch.device("cuda"))
loss = _step(x, labels, False)
torch.cuda.synchronize()
data = loss.detach().float().cpu().numpy().tobytes() + x.grad.float().cpu().numpy().tobytes()
print(hashlib.sha256(data).hexdigest())
"""


def _in_a_process(code: str, env: dict) -> tuple[str, float]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks")], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        return "error: " + (done.stderr.strip().splitlines() or ["?"])[-1], time.perf_counter() - t0
    return done.stdout.strip().splitlines()[-1], time.perf_counter() - t0


def deterministic() -> dict:
    env = dict(os.environ, DCR_DETERMINISTIC="1")
    digests = [_in_a_process(_DIGEST, env)[0] for _ in range(2)]
    return {"identical": digests[0] == digests[1] and not digests[0].startswith("error"), "digests": digests}


_FIRST_CALL = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from gpu_runtime_check import _inputs, _step
from dcr_kernels.backends.triton import tuning
x, labels = _inputs(torch.device("cuda"))
t0 = time.perf_counter()
_step(x, labels, False)
torch.cuda.synchronize()
cache = tuning.cache_for(torch.cuda.get_device_name())
print(f"{time.perf_counter() - t0:.3f} {len(cache.choices)}")
"""


def tuning_cache() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if k not in ("DCR_TRITON_AUTOTUNE", "DCR_DETERMINISTIC")}
        env["DCR_CACHE"] = folder
        first, second = (_in_a_process(_FIRST_CALL, env)[0] for _ in range(2))
    try:
        (t1, n1), (t2, n2) = (map(float, out.split()) for out in (first, second))
    except ValueError:
        return {"ok": False, "first": first, "second": second}
    return {"ok": n1 > 0 and n2 == n1, "entries": int(n1), "first_call_s": [t1, t2]}


def check_overhead(device: torch.device, repeats: int = 20) -> dict:
    x, labels = _inputs(device)
    out = {}
    for check_inputs in (True, False):
        _step(x, labels, check_inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            x.grad = None
            _step(x, labels, check_inputs)
        torch.cuda.synchronize()
        out[f"check_inputs={check_inputs}"] = (time.perf_counter() - t0) / repeats * 1e3 / 4  # ms per loss call
    return out


def run_all(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"skipped": "needs a CUDA device"}
    result = {}
    for name, fn in (
        ("sync_free", lambda: sync_free(device)),
        ("cuda_graph", lambda: graph_capture(device)),
        ("deterministic", deterministic),
        ("tuning_cache", tuning_cache),
        ("check_overhead_ms", lambda: check_overhead(device)),
    ):
        try:
            result[name] = fn()
        except Exception as err:  # one failing check must not lose the others
            result[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(name, json.dumps(result[name]), flush=True)
    return result


if __name__ == "__main__":
    print(json.dumps(run_all(torch.device("cuda" if torch.cuda.is_available() else "cpu")), indent=1))
