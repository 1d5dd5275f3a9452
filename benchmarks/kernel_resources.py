"""Compile every Triton kernel launch the backend makes, with every tile config the autotuner may pick, for
sm_80 and sm_90 on the CPU, and read what each needs on the GPU: shared memory, registers and spill bytes
per thread (ptxas -v from the Triton wheel), and the MMA kind the similarity dots lowered to (Hopper
warp-group MMA, mma.sync, or FMA).

The launches are captured from the launcher itself (`kernel_launches.py`: aligned and ragged batches,
B in {1000, 65536}, D in {130, 256, 1536}, every dtype, loss and call) and specialised by Triton's own
binder, so what is compiled here is what a GPU launch compiles; one row per distinct compile and config.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import sass  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {80: ("sm_80", 163 * 1024), 90: ("sm_90a", 227 * 1024)}  # ptxas arch, shared memory per block
LOSSES = {0: "softmax", 1: "circle", 2: "sigmoid"}
DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
MAX_REGISTERS = 255
REGISTER_FILE = 65536  # 32-bit registers per SM (sm_80 and sm_90)


def variants() -> list[dict]:
    """Every (target, captured launch, config) the autotuner may compile, with the cases that launch it."""
    import torch
    from kernel_launches import captured_variants

    from dcr_kernels.backends.triton import launch

    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for cap in TARGETS:
        for v in captured_variants(cap):
            dtype = v.signature["A"].lstrip("*")
            loss, guided = v.constexprs["LOSS"], v.constexprs["GUIDED"]
            precision = v.constexprs["INPUT_PRECISION"] if dtype == "fp32" or guided else ""  # of the fp32 dots
            for c in launch.gpu_configs(v.kernel, torch_dtypes[dtype], cap, precision or "tf32", loss, guided):
                out.append(
                    dict(
                        capability=cap,
                        kernel=v.kernel,
                        loss=LOSSES[v.constexprs["LOSS"]],
                        dtype=dtype,
                        col_term=v.constexprs.get("COL_TERM"),
                        guided=guided,
                        precision=precision,
                        block=[c.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")],
                        warps=c.num_warps,
                        stages=c.num_stages,
                        launches=len(v.cases),
                        shapes=sorted({f"{b}x{d}" for b, d, *_ in v.cases}),
                        signature=v.signature,
                        attrs=[[list(k), a] for k, a in v.attrs.items()],
                        constexprs=v.constexprs,
                    )
                )
    return out


def compile_row(row: dict):
    """The compiled kernel (Triton's CompiledKernel) of one row of `variants()`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcr_kernels.backends.triton import kernels

    constexprs = dict(row["constexprs"], BLOCK_M=row["block"][0], BLOCK_N=row["block"][1], BLOCK_K=row["block"][2])
    attrs = {tuple(k): a for k, a in row["attrs"]}
    return triton.compile(
        ASTSource(fn=getattr(kernels, row["kernel"]), signature=row["signature"], constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", row["capability"], 32),
        options={"num_warps": row["warps"], "num_stages": row["stages"]},
    )


def tool(name: str) -> Path:
    """A CUDA tool shipped in the Triton wheel (ptxas, cuobjdump, nvdisasm)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def inspect(row: dict) -> dict:
    """Compile one row for its target and read its resources."""
    compiled = compile_row(row)
    arch = TARGETS[row["capability"]][0]
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}"]  # as Triton's own ptxas call
        cmd = [str(tool("ptxas")), *flags, str(ptx), "-o", str(ptx) + ".o"]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    ttgir = compiled.asm["ttgir"]
    mma = "wgmma" if "warp_group_dot" in ttgir else "mma.sync" if "nvidia_mma" in ttgir else "fma"
    kept = {k: v for k, v in row.items() if k not in ("signature", "attrs", "constexprs")}
    out = dict(
        kept,
        want_best=row["constexprs"].get("WANT_BEST"),
        shared=compiled.metadata.shared,
        registers=int(re.search(r"Used (\d+) registers", log).group(1)),
        spill=int(re.search(r"(\d+) bytes spill stores", log).group(1)),
        mma=mma,
    )
    threads = 32 * row["warps"]
    out["blocks_per_sm"] = min(
        REGISTER_FILE // (out["registers"] * threads), TARGETS[row["capability"]][1] // max(1, out["shared"])
    )
    # the instruction counts the cost model reads; not for a guided call with IEEE dots, whose guide K loop runs
    # on FMA units beside the model's warp-group MMA loop: the counter reads one kind of K loop per kernel
    mixed_loops = row["guided"] and row["precision"] == "ieee" and row["dtype"] != "fp32"
    if row["capability"] == 90 and mma == "wgmma" and not mixed_loops:
        found = sass.counts(sass.disassemble(compiled.asm["cubin"], tool("nvdisasm")), *row["block"][:2], row["warps"])
        out["sass"] = {k: v for k, v in found.items() if k != "hot_opcodes"}
    return out


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
        "registers and spill bytes per thread from `ptxas -v`, and the MMA kind of the similarity dots. On sm_90,",
        "the SASS counts per thread (benchmarks/sass.py): instructions per pair outside the K loop on an interior",
        "tile's path (hot) and on every path, MUFU (exp2 / log2) per pair, and instructions and MMAs per K step.",
        "Each row is one compile of a launch captured from the launcher (benchmarks/kernel_launches.py) and",
        "specialised by Triton's binder; `launches` counts the captured calls (aligned and ragged batches,",
        "B in {1000, 65536}, D in {130, 256, 1536}, self / cross / symmetric) that compile to it.",
        "",
        "| target | kernel | loss | dtype | column term | fp32 dots | BLOCK M x N x K | warps | stages "
        "| best column | launches | shared KiB | registers | spill B | MMA | fits | blocks / SM "
        "| epilogue instr. / pair (hot, all paths) | MUFU / pair | instr. / K step | MMA / K step |",
        "|---|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        col = "" if r["col_term"] is None else ("yes" if r["col_term"] else "no")
        lines.append(
            f"| sm_{r['capability']} | {r['kernel']} | {r['loss']}{' (guided)' if r['guided'] else ''} | {r['dtype']} "
            f"| {col} | {r['precision']} "
            f"| {'x'.join(map(str, r['block']))} | {r['warps']} | {r['stages']} "
            f"| {'' if r['want_best'] is None else ('yes' if r['want_best'] else 'no')} | {r['launches']} "
            f"| {r['shared'] / 1024:.0f} | {r['registers']} | {r['spill']} | {r['mma']} "
            f"| {'yes' if fits(r) else '**no**'} | {r['blocks_per_sm']} | {_sass_cells(r)} |"
        )
    return "\n".join(lines) + "\n"


def _sass_cells(r: dict) -> str:
    if "sass" not in r:
        return " | | |"
    c = r["sass"]
    return (
        f"{c['epilogue_per_pair']:.1f}, {c['epilogue_all_paths_per_pair']:.1f} | {c['mufu_per_pair']:.2f} "
        f"| {c['k_step_instructions']} | {c['mma_per_k_step']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS / "triton_resources")
    args = parser.parse_args(argv)
    rows = measure(args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    bad = [r for r in rows if not fits(r)]
    print(f"{len(rows)} compiles, {len(bad)} that do not fit; table in {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
