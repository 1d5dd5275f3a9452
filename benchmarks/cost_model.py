"""Predicted time of the Triton backend on an H200, read from the compiled code, next to Inf-CL's symmetric loss.

Every number about the kernels comes from their sm_90 compile (`benchmarks/results/triton_resources.json`,
written by `kernel_resources.py` from the launches the launcher really makes): per thread, the instructions
of one K step and the MMAs in it, the instructions per pair outside the K loop on an interior tile, the
MUFU (exp2) operations per pair, the registers and shared memory, hence the blocks per SM. A tile costs,
in SM clocks:
- MMA: BLOCK_M BLOCK_N BLOCK_K 2 / (4096 x 0.85) per K step (bf16 dense at 85% of the spec, the share the
  best GEMMs reach);
- issue: an SM issues 4 warp-instructions per clock, so instructions x warps / 4 per K step, and
  (instructions per pair) x BLOCK_M BLOCK_N / 128 for the epilogue;
- MUFU: 16 per clock per SM, (MUFU per pair) x BLOCK_M BLOCK_N / 16.
How they combine is read from the compiled code too: the compiled loop waits for a tile's MMAs before its
epilogue and refills the pipeline inside the column loop, so with one block per SM a tile takes
max(MMA, K-loop issue) + max(epilogue issue, MUFU) (serial); where the registers and shared memory let two
blocks share an SM, one's epilogue runs under the other's MMAs and a tile takes
max(MMA, all issue, MUFU) (overlapped). A pass over B x B pairs takes its tiles over 132 SMs, or its HBM
bytes at 4.8 TB/s if that is longer: the inputs (each row block reads B once per wave of blocks), W
(2 bytes per pair, bf16) written by the backward kernel and read by each GEMM, the dA / dB accumulation
over W blocks (`launch.workspace_shape`), and the padding copies of rows whose D is not a multiple of 16.
The cuBLAS GEMMs are assumed to run at the same 85% of the bf16 peak. The tile config of each kernel is the one the
model finds fastest among those the autotuner may pick. Predictions, not measurements: the GPU check
(`benchmarks/gpu_check.py`) measures the same points and writes them side by side.

    python benchmarks/cost_model.py          # prints the markdown table used in docs/design.md and README
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from dcr_kernels.backends.triton.launch import workspace_shape

RESOURCES = Path(__file__).resolve().parent / "results" / "triton_resources.json"
SMS = 132
PEAK = {"bf16": 989e12, "tf32": 495e12}  # dense tensor-core FLOP/s (H200 SXM, the H100's compute)
CLOCK = PEAK["bf16"] / (SMS * 4096)  # 1.83 GHz: 4096 bf16 MMA FLOP per clock per SM
ISSUE = 4 * 32  # thread-instructions per clock per SM
MUFU = 16  # special-function results per clock per SM
HBM = 4.8e12
MMA_EFFICIENCY = 0.85  # the tensor cores at best reach this share of the dense spec (the best GEMMs do)
B = 65536
DIMS = (256, 1024, 4096)


def _resources() -> list[dict]:
    return [r for r in json.loads(RESOURCES.read_text()) if "sass" in r and r["dtype"] == "bf16"]


@dataclass
class Tile:
    """One compiled config of one kernel variant, from the resource table."""

    row: dict

    def clocks(self, d: int) -> tuple[float, str]:
        """SM clocks per tile at dimension d and what bounds it."""
        r, c = self.row, self.row["sass"]
        bm, bn, bk = r["block"]
        steps = math.ceil(-(-d // 16) * 16 / bk)
        mma = steps * bm * bn * bk * 2 / (4096 * MMA_EFFICIENCY)
        k_issue = steps * c["k_step_instructions"] * r["warps"] / 4
        epilogue_issue = c["epilogue_per_pair"] * bm * bn / ISSUE
        mufu = c["mufu_per_pair"] * bm * bn / MUFU
        if r["blocks_per_sm"] >= 2:
            parts = {"MMA": mma, "issue": k_issue + epilogue_issue, "MUFU": mufu}
            bound = max(parts, key=parts.get)
            return parts[bound], f"overlapped, {bound}-bound"
        main, epilogue = max(mma, k_issue), max(epilogue_issue, mufu)
        return main + epilogue, "serial, " + (
            "MMA" if mma >= k_issue else "issue"
        ) + f" + {100 * epilogue / (main + epilogue):.0f}% epilogue"

    def seconds(self, m: int, n: int, d: int, w_bytes: float = 0.0) -> tuple[float, str]:
        r = self.row
        bm, bn = r["block"][:2]
        per_tile, how = self.clocks(d)
        tiles = math.ceil(m / bm) * math.ceil(n / bn)
        compute = tiles * per_tile / (SMS * CLOCK)
        waves = math.ceil(math.ceil(m / bm) / (SMS * r["blocks_per_sm"]))
        memory = ((m + waves * n) * d * 2 + m * n * w_bytes) / HBM
        return (compute, how) if compute >= memory else (memory, "memory-bound")


def _tiles(kernel: str, loss: str, *, col_term: bool | None = None, want_best: bool | None = None) -> list[Tile]:
    return [
        Tile(r)
        for r in _resources()
        if r["capability"] == 90
        and r["kernel"] == kernel
        and r["loss"] == loss
        and (col_term is None or r["col_term"] == col_term)
        and (want_best is None or r["want_best"] == want_best)
    ]


def _fastest(tiles: list[Tile], m: int, n: int, d: int, w_bytes: float = 0.0) -> tuple[float, str, Tile]:
    if not tiles:
        raise ValueError("no compiled config in the resource table: run benchmarks/kernel_resources.py")
    best = min(tiles, key=lambda t: t.seconds(m, n, d, w_bytes)[0])
    return (*best.seconds(m, n, d, w_bytes), best)


def _gemm(m: int, n: int, d: int) -> float:
    """dA = W B or dB = W^T A from a bf16 W: 2 m n d FLOP at cuBLAS efficiency, or W's bytes if longer."""
    return max(2.0 * m * n * d / (PEAK["bf16"] * MMA_EFFICIENCY), 2.0 * m * n / HBM)


def _accumulation(m: int, n: int, d: int, cross: bool) -> float:
    """HBM time of accumulating dA over column blocks and dB over row blocks of W (bf16 product written
    and read, fp32 accumulator read and written: 12 bytes per element)."""
    rows, cols = workspace_shape(m, n, 2)  # the launcher's own blocks at the default workspace
    blocks_m, blocks_n = math.ceil(m / rows), math.ceil(n / cols)
    elements = blocks_n * m * d if blocks_n > 1 else 0  # one column block: dA = W B written once
    if cross:
        elements += blocks_m * n * d
    return elements * 12 / HBM


def passes(loss: str, d: int, mode: str, batch: int = B) -> list[tuple[str, float, str]]:
    """(pass, seconds, what bounds it) for one forward + backward of `loss` at batch x batch in bf16, in
    `mode` "self" (W holds the row and column terms; one GEMM), "cross" (row term; dA and dB) or
    "symmetric" (two forward passes; both terms; dA and dB)."""
    forward = _fastest(_tiles("similarity_stats_kernel", loss, want_best=False), batch, batch, d)
    out = [("forward", forward[0], forward[1])]
    if mode == "symmetric":
        out.append(("forward, column statistics", forward[0], forward[1]))
    col_term = mode != "cross"
    weights = _fastest(_tiles("pair_weights_kernel", loss, col_term=col_term), batch, batch, d, w_bytes=2.0)
    out.append(("backward: W kernel", weights[0], weights[1]))
    out.append(("backward: dA = W B (cuBLAS)", _gemm(batch, batch, d), "GEMM"))
    if mode != "self":
        out.append(("backward: dB = W^T A (cuBLAS)", _gemm(batch, batch, d), "GEMM"))
    accumulation = _accumulation(batch, batch, d, cross=mode != "self")
    out.append(("backward: dA / dB accumulation over W blocks", accumulation, "memory"))
    return out


def forward_fraction(loss: str, d: int, want_best: bool = False) -> tuple[float, float, str, Tile]:
    """(ms, fraction of the bf16 peak, bound, config) of the self-mode forward at B x B."""
    seconds, how, tile = _fastest(_tiles("similarity_stats_kernel", loss, want_best=want_best), B, B, d)
    return seconds * 1e3, 2.0 * B * B * d / PEAK["bf16"] / seconds, how, tile


def inf_cl_ms(d: int) -> float:
    """Inf-CL's symmetric loss, a lower bound: 10 units of tf32 dots (per direction a forward and two
    backward kernels that recompute the scores), one exponential and 8 other operations per pair and pass
    on the CUDA cores, its fp32 read-modify-write of dQ / dK per 256-wide D slice left out."""
    pairs = float(B) * B
    units = 10
    exps, alu = 6, 6 * 8  # per pair over its six passes
    return 1e3 * (
        units * 2 * pairs * d / PEAK["tf32"] + pairs * exps / (SMS * MUFU * CLOCK) + pairs * alu / (SMS * ISSUE * CLOCK)
    )


def _step_row(d: int, work: str, loss: str, mode: str, units: int) -> dict:
    """One forward + backward: its predicted time, the fraction of the bf16 peak its `units` of matmul
    work reach, and each pass with what bounds it."""
    steps = passes(loss, d, mode)
    seconds = sum(s for _, s, _ in steps)
    return dict(
        d=d,
        work=work,
        ms=seconds * 1e3,
        fraction=units * 2.0 * B * B * d / PEAK["bf16"] / seconds,
        bound="; ".join(f"{name} {1e3 * s:.1f} ms ({how})" for name, s, how in steps),
    )


def rows() -> list[dict]:
    out = []
    for d in DIMS:
        for loss in ("softmax", "circle"):
            ms, fraction, how, tile = forward_fraction(loss, d)
            cfg = tile.row
            out.append(
                dict(
                    d=d,
                    work=f"forward ({'InfoNCE / SupCon' if loss == 'softmax' else 'Circle'}, self mode)",
                    ms=ms,
                    fraction=fraction,
                    bound=how,
                    config=f"{'x'.join(map(str, cfg['block']))}, {cfg['warps']} warps",
                )
            )
        clip = _step_row(d, "symmetric InfoNCE (CLIP) forward + backward", "softmax", "symmetric", units=5)
        out.append(dict(clip, inf_cl_ms=inf_cl_ms(d)))
        out.append(_step_row(d, "Circle forward + backward (self mode)", "circle", "self", units=3))
    return out


def markdown() -> str:
    lines = [
        "| D | work | predicted ms | fraction of bf16 peak | Inf-CL ms (lower bound) | ours / Inf-CL "
        "| what bounds it |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows():
        inf = r.get("inf_cl_ms")
        speedup = f"{inf / r['ms']:.1f}x faster" if inf else ""
        where = r["bound"] + (f" ({r['config']})" if "config" in r else "")
        lines.append(
            f"| {r['d']} | {r['work']} | {r['ms']:.1f} | {r['fraction']:.2f} | {f'{inf:.1f}' if inf else ''} "
            f"| {speedup} | {where} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(f"B = {B}, H200: bf16 {PEAK['bf16'] / 1e12:.0f} TFLOP/s, HBM {HBM / 1e12:.1f} TB/s, {SMS} SMs\n")
    print(markdown())
