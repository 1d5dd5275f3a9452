"""Compile every Triton kernel variant and tile config for sm_80 and sm_90 on the CPU, and read what each
needs on the GPU: shared memory, registers and spill bytes per thread (ptxas -v from the Triton wheel),
and the MMA kind the similarity dots lowered to (Hopper warp-group MMA, mma.sync, or FMA).

A variant is everything the autotuner keys or specialises on: the kernel, the loss family, the input
dtype, and for the backward whether the column term is present. D is a run-time argument, so one compile
covers every D: the launcher hands the kernels rows padded to a multiple of 16 elements and 16-byte
aligned pointers (`launch.kernel_ready`), so Triton's divisibility specialisation is the same for every D.

    python benchmarks/kernel_resources.py            # writes benchmarks/results/triton_resources.{json,md}

`tests/kernels/test_triton_resources.py` runs this and asserts that every config the launcher keeps fits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIMS = (64, 130, 256, 384, 576, 600, 768, 1024, 1100, 1536, 2048, 2100, 4096, 8192)
TARGETS = {80: ("sm_80", 163 * 1024), 90: ("sm_90a", 227 * 1024)}  # ptxas arch, shared memory per block
DTYPES = ("fp32", "bf16", "fp16")
LOSSES = {"softmax": 0, "circle": 1}
MAX_REGISTERS = 255


def variants() -> list[dict]:
    """Every (target, kernel, loss, dtype, column term, fp32 dot precision, config) the launcher can compile."""
    import torch

    from dcr_kernels.backends.triton import launch

    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for cap, kernel, loss, dtype in product(TARGETS, launch.KERNELS, LOSSES, DTYPES):
        col_terms = (False, True) if kernel == "pair_weights_kernel" else (None,)
        precisions = ("tf32", "ieee") if dtype == "fp32" else ("",)
        for col_term, precision in product(col_terms, precisions):
            configs = launch.gpu_configs(kernel, torch_dtypes[dtype], cap, precision or "tf32")
            out += [
                dict(
                    capability=cap,
                    kernel=kernel,
                    loss=loss,
                    dtype=dtype,
                    col_term=col_term,
                    precision=precision,
                    block=[c.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")],
                    warps=c.num_warps,
                    stages=c.num_stages,
                )
                for c in configs
            ]
    return out


def _signature(kernel, dtype: str) -> tuple[dict, dict]:
    """Triton signature and divisibility attributes as a launch specialises them: every pointer 16-byte
    aligned, D and the row strides multiples of 16 (`launch.kernel_ready` guarantees both)."""
    element = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[dtype]
    pointers = {
        "A": element,
        "B": element,
        "W": "fp32" if dtype == "fp32" else "bf16",
        "LABELS_A": "i32",
        "LABELS_B": "i32",
        "BEST_IDX": "i64",
    }
    sizes = {"M", "N", "D", "stride_a", "stride_b", "stride_w", "col_scale"}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in ("margin", "gamma"):
            signature[name] = "fp32"
        elif name == "diag_offset":
            signature[name] = "i64"
        elif name in sizes:
            signature[name] = "i32"
            if name in ("D", "stride_a", "stride_b", "stride_w"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.isupper() and not name.startswith("BLOCK") and name not in ("LOSS", "COL_TERM", "UPCAST"):
            if name == "INPUT_PRECISION":
                signature[name] = "constexpr"
                continue
            signature[name] = "*" + pointers.get(name, "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
    return signature, attrs


def inspect(v: dict) -> dict:
    """Compile one variant for its target and read its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcr_kernels.backends.triton import kernels

    kernel = getattr(kernels, v["kernel"])
    signature, attrs = _signature(kernel, v["dtype"])
    constexprs = dict(
        LOSS=LOSSES[v["loss"]],
        UPCAST=False,
        INPUT_PRECISION=v["precision"] or "tf32",
        BLOCK_M=v["block"][0],
        BLOCK_N=v["block"][1],
        BLOCK_K=v["block"][2],
    )
    if v["col_term"] is not None:
        constexprs["COL_TERM"] = v["col_term"]
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", v["capability"], 32),
        options={"num_warps": v["warps"], "num_stages": v["stages"]},
    )
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    arch = TARGETS[v["capability"]][0]
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}"]  # as Triton's own ptxas call
        cmd = [str(ptxas), *flags, str(ptx), "-o", str(ptx) + ".o"]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    ttgir = compiled.asm["ttgir"]
    mma = "wgmma" if "warp_group_dot" in ttgir else "mma.sync" if "nvidia_mma" in ttgir else "fma"
    return dict(
        v,
        shared=compiled.metadata.shared,
        registers=int(re.search(r"Used (\d+) registers", log).group(1)),
        spill=int(re.search(r"(\d+) bytes spill stores", log).group(1)),
        mma=mma,
    )


def fits(row: dict) -> bool:
    return row["shared"] <= TARGETS[row["capability"]][1] and row["spill"] == 0 and row["registers"] <= MAX_REGISTERS


def measure(workers: int) -> list[dict]:
    env_interpret = os.environ.pop("TRITON_INTERPRET", None)  # the compiler needs real JIT functions
    try:
        todo = variants()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(inspect, todo))
    finally:
        if env_interpret is not None:
            os.environ["TRITON_INTERPRET"] = env_interpret


def markdown(rows: list[dict]) -> str:
    import triton

    lines = [
        f"# Triton kernel resources (Triton {triton.__version__}, compiled on the CPU)",
        "",
        "Written by `benchmarks/kernel_resources.py`. Shared memory per block (limits: sm_80 163 KiB, sm_90 227 KiB),",
        "registers and spill bytes per thread from `ptxas -v`, and the MMA kind of the similarity dots.",
        "D is a run-time argument, so each compile serves every D (rows reach the kernels padded to a multiple",
        f"of 16 elements): D = {', '.join(map(str, DIMS))} and beyond.",
        "",
        "| target | kernel | loss | dtype | column term | fp32 dots | BLOCK M x N x K | warps | stages "
        "| shared KiB | registers | spill B | MMA | fits |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        col = "" if r["col_term"] is None else ("yes" if r["col_term"] else "no")
        lines.append(
            f"| sm_{r['capability']} | {r['kernel']} | {r['loss']} | {r['dtype']} | {col} | {r['precision']} "
            f"| {'x'.join(map(str, r['block']))} | {r['warps']} | {r['stages']} | {r['shared'] / 1024:.0f} "
            f"| {r['registers']} | {r['spill']} | {r['mma']} | {'yes' if fits(r) else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS / "triton_resources")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = measure(args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    bad = [r for r in rows if not fits(r)]
    print(f"{len(rows)} compiles, {len(bad)} that do not fit; table in {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
