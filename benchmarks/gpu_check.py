"""The GPU check, one call of at most 8 minutes on a CUDA machine:

1. the Triton tests on the GPU (tests/kernels/test_triton.py, tests/kernels/test_distributed_blocks.py,
   tests/kernels/test_compile_autocast.py);
2. the device's bf16 matmul peak, measured in the same run;
3. the kernel points, in priority order (`PLAN`): symmetric InfoNCE (CLIP) against Inf-CL and the
   forward at B = 65536, D = 1024 bf16; D = 768 fp32, D = 1536 and 4096 bf16 for every loss; one million
   rows at D = 256 bf16; then the B x D grid against eager dense PyTorch, with peak memory above the inputs;
4. the checks of the kernel issue beside the cost model's predictions (benchmarks/cost_model.py): forward
   at B = 65536, D = 1024 bf16 against the measured matmul peak (target 0.6); symmetric forward+backward
   against Inf-CL (target 3x); peak memory per row; and, before the sweep, one forward + backward per
   point of `PER_KERNEL` profiled kernel by kernel beside the model's prediction for each pass (ragged
   batches and dimensions are in the plan too);
5. the runtime checks (benchmarks/gpu_runtime_check.py): no host synchronisation with check_inputs=False,
   CUDA-graph capture, bit-identical results in deterministic mode across processes, the tuning cache
   read by a second process, and the cost of the input checks;
6. one DCR step at Qwen2.5-1.5B's and LLaMA-3-8B's architectures (benchmarks/gpu_dcr_step.py) in the time
   that is left (`--dcr-step-s` of it kept for this).

Results go to benchmarks/results/gpu_<date>.json and .md with the GPU's name and the versions. Work is
ordered by priority and stops before the time budget runs out, so a partial run still writes its file.

    python benchmarks/gpu_check.py [--budget-s 420]

Inf-CL is an optional peer: `pip download inf-cl==1.2.1 --no-deps -d .wheels` beforehand, carry `.wheels`
to the machine and `pip install --no-deps .wheels/*.whl` there. `--device cpu --max-b 256` checks the
script itself on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import baselines  # noqa: E402
import cost_model  # noqa: E402
import gpu_dcr_step  # noqa: E402
import gpu_runtime_check  # noqa: E402

import dcr_kernels as dk  # noqa: E402
from dcr_kernels.guided_lse import guided_row_logsumexp  # noqa: E402

SIZES = (4096, 16384, 65536)
DIMS = (256, 1024)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# (loss, B, D, dtype, providers), most important first
PLAN = [
    ("clip", 65536, 1024, "bfloat16", ("ours", "inf-cl")),
    ("info_nce", 65536, 1024, "bfloat16", ("ours",)),
    ("clip", 16384, 768, "float32", ("ours", "inf-cl", "dense")),
    ("supcon", 16384, 768, "float32", ("ours", "dense")),
    ("circle", 16384, 768, "float32", ("ours", "dense")),
    ("circle", 65536, 1536, "bfloat16", ("ours",)),
    ("supcon", 65536, 1536, "bfloat16", ("ours",)),
    ("clip", 65536, 4096, "bfloat16", ("ours", "inf-cl")),
    ("circle", 65536, 4096, "bfloat16", ("ours",)),
    ("clip", 65536, 256, "bfloat16", ("ours", "inf-cl")),
    ("info_nce", 1048576, 256, "bfloat16", ("ours",)),
    # ragged batches and dimensions (N % 16 != 0, D % 16 != 0): the launches the resource test captures
    # SigLIP's sigmoid loss: the kernels' sigmoid epilogues against the row-chunked PyTorch path and dense
    ("siglip", 65536, 1024, "bfloat16", ("ours", "chunked")),
    ("siglip", 16384, 768, "float32", ("ours", "chunked", "dense")),
    ("gist", 65536, 1024, "bfloat16", ("ours", "chunked")),
    ("gist", 16384, 768, "float32", ("ours", "chunked", "dense")),
    ("clip", 65000, 1000, "bfloat16", ("ours",)),
    ("circle", 1000, 130, "bfloat16", ("ours",)),
    ("supcon", 65000, 130, "float32", ("ours",)),
]
# (loss, B, D): forward + backward profiled kernel by kernel against benchmarks/cost_model.py's passes
PER_KERNEL = [("clip", 65536, 1024), ("info_nce", 65536, 256), ("circle", 65536, 1024), ("clip", 65536, 256)]
_LONG_MS = 200.0  # a step this slow is timed twice instead of by do_bench's repeated runs
TEMPERATURE, MARGIN, GAMMA = 0.07, 0.4, 80.0
SIGLIP_SCALE, SIGLIP_BIAS = 10.0, -10.0


class Clock:
    """Seconds left before the budget runs out."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def environment(device: torch.device) -> dict:
    import triton

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def run_tests(clock: Clock, limit_s: float) -> dict:
    """The Triton tests on this device, first config only (compiles stay quick)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "tests/kernels/test_triton.py",
        "tests/kernels/test_distributed_blocks.py",
        "tests/kernels/test_compile_autocast.py",
    ]
    env = dict(os.environ, DCR_TRITON_AUTOTUNE="0")
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(limit_s, clock.left())
        )
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        return {"returncode": done.returncode, "seconds": round(time.monotonic() - t0, 1), "tail": tail}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "seconds": round(time.monotonic() - t0, 1), "tail": ["timed out"]}


def _once_ms(fn, grads: list[torch.Tensor], device: torch.device) -> float:
    for g in grads:
        g.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def bench_ms(fn, grads: list[torch.Tensor], device: torch.device) -> float:
    """Median milliseconds of `fn` (gradients reset before each call); a slow step (the first call, which
    autotunes, excluded) is timed once more instead of repeatedly."""
    if device.type == "cuda":
        import triton.testing

        _once_ms(fn, grads, device)  # compile and autotune
        first = _once_ms(fn, grads, device)
        if first > _LONG_MS:
            return min(first, _once_ms(fn, grads, device))
        return float(triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grads, return_mode="median"))
    times = []
    for _ in range(3):
        for g in grads:
            g.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def matmul_peak_tflops(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b, [], device)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _peak_bytes(fn, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _providers(loss: str, backend: str):
    """name -> fn(q, k, labels) returning the loss, for our kernels and the peers."""
    if loss == "clip":
        out = {
            "ours": lambda q, k, y: dk.info_nce(q, k, temperature=TEMPERATURE, symmetric=True, backend=backend),
            "dense": lambda q, k, y: (
                0.5 * (baselines.dense_info_nce(q, k, TEMPERATURE) + baselines.dense_info_nce(k, q, TEMPERATURE))
            ),
        }
        try:
            from inf_cl import cal_inf_loss

            def inf_cl(q, k, y):
                qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
                return 0.5 * (cal_inf_loss(qn, kn, scale=1 / TEMPERATURE) + cal_inf_loss(kn, qn, scale=1 / TEMPERATURE))

            out["inf-cl"] = inf_cl
        except ImportError:
            pass
        return out
    if loss == "siglip":
        siglip = dict(scale=SIGLIP_SCALE, bias=SIGLIP_BIAS)

        def dense_siglip(q, k, y):
            logits = SIGLIP_SCALE * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T + SIGLIP_BIAS
            labels = 2 * torch.eye(q.shape[0], device=q.device, dtype=logits.dtype) - 1
            return -F.logsigmoid(labels * logits).sum() / q.shape[0]

        return {
            "ours": lambda q, k, y: dk.sigmoid_loss(q, k, **siglip, backend=backend),
            "chunked": lambda q, k, y: dk.sigmoid_loss(q, k, **siglip, backend="chunked"),
            "dense": dense_siglip,
        }
    if loss == "gist":  # GISTEmbed's guided row log-sum-exp: the guide is the keys themselves, perturbed

        def guided(backend_name: str):
            def run(q, k, y):
                qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
                gq, gk = (F.normalize(x.detach().float() + 0.5, dim=-1) for x in (q, k))
                threshold = (gq * gk).sum(dim=1)  # the positive's guide similarity: absolute margin 0
                lse = guided_row_logsumexp(qn, kn, gq, gk, 1 / TEMPERATURE, threshold, protect_offset=0,
                                           backend=backend_name)  # fmt: skip
                return (lse - (qn * kn).sum(dim=1) / TEMPERATURE).mean()

            return run

        def dense_gist(q, k, y):
            qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            gq, gk = (F.normalize(x.detach().float() + 0.5, dim=-1) for x in (q, k))
            own = torch.eye(q.shape[0], dtype=torch.bool, device=q.device)
            keep = (gq @ gk.T <= (gq * gk).sum(dim=1)[:, None]) | own
            logits = (qn @ kn.T / TEMPERATURE).float().masked_fill(~keep, float("-inf"))
            return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))

        return {"ours": guided(backend), "chunked": guided("chunked"), "dense": dense_gist}
    if loss == "info_nce":  # self mode: two stacked views, row i's positive is row (i + B/2) mod B
        return {"ours": lambda q, k, y: dk.info_nce(q, temperature=TEMPERATURE, backend=backend)}
    if loss == "supcon":
        return {
            "ours": lambda q, k, y: dk.supcon_loss(q, y, temperature=TEMPERATURE, backend=backend),
            "dense": lambda q, k, y: baselines.dense_supcon(q, y, TEMPERATURE),
        }
    return {
        "ours": lambda q, k, y: dk.circle_loss(q, y, margin=MARGIN, gamma=GAMMA, backend=backend),
        "dense": lambda q, k, y: baselines.dense_circle(q, y, MARGIN, GAMMA),
    }


def measure(loss: str, provider: str, fn, b: int, d: int, dtype: torch.dtype, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(b, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    y = torch.arange(b, device=device) % max(1, b // 4)
    row = {"loss": loss, "provider": provider, "B": b, "D": d, "dtype": str(dtype).removeprefix("torch.")}
    try:
        with torch.no_grad():
            row["forward_ms"] = bench_ms(lambda: fn(q, k, y), [], device)
        row["forward_backward_ms"] = bench_ms(lambda: fn(q, k, y).backward(), [q, k], device)
        q.grad = k.grad = None
        row["peak_bytes"] = _peak_bytes(lambda: fn(q, k, y).backward(), device)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # a peer failing must not stop the sweep
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def sweep(device: torch.device, backend: str, plan, clock: Clock, reserve_s: float) -> list[dict]:
    rows = []
    for loss, b, d, dt_name, names in plan:
        providers = _providers(loss, backend)
        for name in names:
            if clock.left() < reserve_s:
                return rows
            if name not in providers:
                row = {"loss": loss, "provider": name, "B": b, "D": d, "dtype": dt_name}
                rows.append(dict(row, error="not installed"))
                continue
            rows.append(measure(loss, name, providers[name], b, d, DTYPES[dt_name], device))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(rows[-1]), flush=True)
    return rows


def full_plan(max_b: int | None) -> list[tuple]:
    """PLAN, then the B x D grid of every loss against eager dense (dense only up to B = 16384)."""
    grid = [
        (loss, b, d, dt, ("ours", "dense") if b <= 16384 else ("ours",))
        for dt in DTYPES
        for d in DIMS
        for b in SIZES
        for loss in ("clip", "supcon", "circle")
    ]
    plan = PLAN + [p for p in grid if p[:4] not in {q[:4] for q in PLAN}]
    if max_b is not None:
        plan = [(loss, min(b, max_b), d, dt, names) for loss, b, d, dt, names in plan]
    return plan


def _kernel_group(name: str) -> str:
    for kernel in ("similarity_stats_kernel", "pair_weights_kernel"):
        if kernel in name:
            return kernel
    return "cuBLAS GEMMs" if any(k in name.lower() for k in ("gemm", "xmma", "cutlass", "sm90")) else "other"


def per_kernel(device: torch.device, backend: str, clock: Clock, reserve_s: float) -> list[dict]:
    """One forward + backward of each PER_KERNEL point under the CUDA profiler: measured milliseconds per
    kernel (grouped as the cost model's passes are) beside the predicted ones, so that a first GPU run
    calibrates the model kernel by kernel."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    out = []
    for loss, b, d in PER_KERNEL:
        if clock.left() < reserve_s:
            break
        fn = _providers(loss, backend)["ours"]
        gen = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(b, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
        k = torch.randn(b, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
        y = torch.arange(b, device=device) % max(1, b // 4)
        fn(q, k, y).backward()  # compile and autotune outside the profile
        q.grad = k.grad = None
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(q, k, y).backward()
            torch.cuda.synchronize(device)
        measured: dict[str, float] = {}
        for event in prof.key_averages():
            total_us = getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0)
            if total_us:
                group = _kernel_group(event.key)
                measured[group] = measured.get(group, 0.0) + total_us / 1e3
        model_loss = "circle" if loss == "circle" else "softmax"
        predicted: dict[str, float] = {}
        mode = "symmetric" if loss == "clip" else "self"
        for name, seconds, _ in cost_model.passes(model_loss, d, mode, batch=b):
            group = (
                "similarity_stats_kernel"
                if name.startswith("forward")
                else "pair_weights_kernel"
                if "W kernel" in name
                else "cuBLAS GEMMs"
                if "cuBLAS" in name
                else "other"
            )
            predicted[group] = predicted.get(group, 0.0) + seconds * 1e3
        row = {"loss": loss, "B": b, "D": d, "measured_ms": measured, "predicted_ms": predicted}
        out.append(row)
        print(json.dumps(row), flush=True)
        del q, k
        torch.cuda.empty_cache()
    return out


def checks(rows: list[dict], peak_tflops: float) -> dict:
    """The kernel issue's GPU criteria, computed from the measured rows."""

    def find(**kw):
        return next((r for r in rows if all(r.get(k) == v for k, v in kw.items()) and "error" not in r), None)

    out = {"matmul_peak_bf16_tflops": round(peak_tflops, 1)}
    for loss in ("info_nce", "circle"):
        big = find(loss=loss, provider="ours", B=65536, D=1024, dtype="bfloat16")
        if big:
            tflops = 2 * 65536**2 * 1024 / (big["forward_ms"] * 1e-3) / 1e12
            out[f"{loss}_forward_65536x1024_bf16_tflops"] = round(tflops, 1)
            out[f"{loss}_forward_fraction_of_measured_peak"] = round(tflops / peak_tflops, 3)
    ratios = {}
    for r in rows:
        if r["provider"] == "ours" and r["loss"] == "clip" and "error" not in r:
            peer = find(loss="clip", provider="inf-cl", B=r["B"], D=r["D"], dtype=r["dtype"])
            if peer:
                ratios[f"{r['B']}x{r['D']}_{r['dtype']}"] = round(
                    peer["forward_backward_ms"] / r["forward_backward_ms"], 2
                )
    out["clip_fwd_bwd_speedup_vs_inf_cl"] = ratios
    memory = {}
    for r in rows:
        if r["provider"] == "ours" and r.get("peak_bytes") and r["D"] == 1024 and r["dtype"] == "bfloat16":
            memory.setdefault(r["loss"], {})[r["B"]] = round(r["peak_bytes"] / r["B"], 1)
    out["peak_bytes_per_row_bf16_D1024"] = memory  # linear in B <=> constant per row
    return out


def write(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu_{result['environment']['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    fence = "```"
    lines = [
        f"# GPU check {result['environment']['date']}",
        "",
        fence,
        json.dumps(result["environment"], indent=1),
        fence,
        "",
        "## Tests",
        "",
        fence,
        *result["tests"]["tail"],
        fence,
        "",
        "## Checks",
        "",
        fence,
        json.dumps(result["checks"], indent=1),
        fence,
        "",
        "## Runtime: synchronisation, CUDA graphs, determinism, tuning cache, checks (gpu_runtime_check.py)",
        "",
        fence,
        json.dumps(result.get("runtime", {}), indent=1),
        fence,
        "",
        "## Predicted (benchmarks/cost_model.py, H200)",
        "",
        cost_model.markdown(),
        "## Per kernel: measured against predicted (ms)",
        "",
        fence,
        *[json.dumps(r) for r in result.get("per_kernel", [])],
        fence,
        "",
        "## One DCR step (benchmarks/gpu_dcr_step.py)",
        "",
        fence,
        *[json.dumps(r) for r in result.get("dcr_step", [])],
        fence,
        "",
        "## Sweep",
        "",
        "| loss | provider | B | D | dtype | forward ms | fwd+bwd ms | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["sweep"]:
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-"
        fwd, fwd_bwd = (f"{r[k]:.3f}" if k in r else "-" for k in ("forward_ms", "forward_backward_ms"))
        fwd = r.get("error", fwd)
        lines.append(
            f"| {r['loss']} | {r['provider']} | {r['B']} | {r['D']} | {r['dtype']} | {fwd} | {fwd_bwd} | {peak} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main() -> None:
    # fp32 cases in TF32 for every contender (our kernels and GEMMs follow this setting: dcr_kernels.precision)
    torch.set_float32_matmul_precision("high")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=420, help="stop starting new work after this many seconds")
    parser.add_argument("--tests-s", type=float, default=150, help="time limit of the GPU test run")
    parser.add_argument("--max-b", type=int, default=None, help="cap every batch size (to check the script)")
    parser.add_argument("--dcr-step-s", type=float, default=90, help="seconds kept for the DCR step timings")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to check this script)")
    parser.add_argument("--backend", default="auto", help="loss backend for 'ours'")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest step")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    clock = Clock(args.budget_s)
    device = torch.device(args.device)
    result = {"environment": environment(device)}
    print(json.dumps(result["environment"]), flush=True)
    result["tests"] = {"tail": ["skipped"]} if args.skip_tests else run_tests(clock, args.tests_s)
    print("\n".join(result["tests"]["tail"]), flush=True)
    result["runtime"] = gpu_runtime_check.run_all(device)
    peak = matmul_peak_tflops(device)
    result["per_kernel"] = per_kernel(device, args.backend, clock, reserve_s=args.dcr_step_s + 60)
    result["sweep"] = sweep(device, args.backend, full_plan(args.max_b), clock, reserve_s=args.dcr_step_s + 10)
    archs = ["tiny"] if args.max_b else ["qwen2.5-1.5b", "llama-3-8b"]
    batches = (64,) if args.max_b else (256, 1024)
    result["dcr_step"] = gpu_dcr_step.measure_all(device, archs, batches, max(0.0, clock.left() - 10))
    result["checks"] = checks(result["sweep"], peak)
    result["predictions"] = cost_model.rows()
    print(json.dumps(result["checks"], indent=1))
    print("wrote", write(result, args.out))


if __name__ == "__main__":
    main()
