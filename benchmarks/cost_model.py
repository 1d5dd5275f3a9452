"""Predicted cost of the Triton backend on an H200 at large batch: matmul units, exponentials, HBM bytes,
and the time they imply, next to Inf-CL's symmetric loss. Predictions, not measurements: the GPU check
(`benchmarks/gpu_check.py`) measures the same points when a GPU is available.

One matmul unit is one M x N x D product (2 M N D flops). A pass's predicted time is the sum of its
tensor-core time, its epilogue time (exponentials on the special-function units, other per-entry
arithmetic on the CUDA cores) and its HBM time, with no overlap assumed, so the prediction is
conservative for a kernel whose epilogue hides under its MMAs.

    python benchmarks/cost_model.py          # prints the markdown table used in docs/design.md
"""

from __future__ import annotations

from dataclasses import dataclass

# H200 SXM (the H100's compute with HBM3e): dense tensor-core peaks, memory bandwidth, and per-entry rates
# of the CUDA cores: 132 SMs x 16 ex2 per clock x 1.83 GHz for exponentials, 132 x 128 FP32 lanes x 1.83 GHz
# for other epilogue operations.
PEAK = {"bf16": 989e12, "tf32": 495e12}
HBM = 4.8e12
EXP_RATE = 132 * 16 * 1.83e9
ALU_RATE = 132 * 128 * 1.83e9
B = 65536
DIMS = (256, 1024, 4096)


@dataclass
class Pass:
    """One kernel or GEMM launch over all B x B pairs."""

    units: float  # matmul units
    exps: float = 0.0  # exponentials per pair
    alu: float = 0.0  # other epilogue operations per pair
    hbm: float = 0.0  # bytes per pair moved through HBM (W written or read)
    dots: str = "bf16"

    def seconds(self, d: int) -> float:
        pairs = float(B) * B
        return (
            self.units * 2 * pairs * d / PEAK[self.dots]
            + pairs * self.exps / EXP_RATE
            + pairs * self.alu / ALU_RATE
            + pairs * self.hbm / HBM
        )


# Ours, bf16 inputs: the forward pass (online LSE, best column), the backward's W kernel (recompute S,
# write W in bf16: 2 bytes per pair) and the cuBLAS GEMMs that read W back.
FORWARD = Pass(units=1, exps=1, alu=8)
W_KERNEL_BOTH_TERMS = Pass(units=1, exps=2, alu=10, hbm=2)
GEMM_READING_W = Pass(units=1, hbm=2)
OURS = {
    "forward (InfoNCE, self mode)": [FORWARD],
    "symmetric InfoNCE forward + backward": [FORWARD, FORWARD, W_KERNEL_BOTH_TERMS, GEMM_READING_W, GEMM_READING_W],
}
# Inf-CL: tf32 dots on fp32-upcast inputs; per direction a forward (1 unit) and two backward kernels that
# recompute the scores (dq: 2 units, dk: 2 units); its fp32 read-modify-write of dq / dk per 256-wide D
# slice is left out, so its prediction is a lower bound.
INF_CL_FORWARD = Pass(units=1, exps=1, alu=8, dots="tf32")
INF_CL_GRAD_KERNEL = Pass(units=2, exps=1, alu=8, dots="tf32")
INF_CL_DIRECTION = [INF_CL_FORWARD, INF_CL_GRAD_KERNEL, INF_CL_GRAD_KERNEL]
INF_CL = {"symmetric InfoNCE forward + backward": INF_CL_DIRECTION * 2}


def rows() -> list[dict]:
    out = []
    for d in DIMS:
        for who, table in (("ours", OURS), ("Inf-CL (lower bound)", INF_CL)):
            for what, passes in table.items():
                seconds = sum(p.seconds(d) for p in passes)
                units = sum(p.units for p in passes)
                useful = units * 2 * float(B) * B * d
                out.append(
                    dict(
                        d=d,
                        who=who,
                        what=what,
                        units=units,
                        hbm_gb=sum(p.hbm for p in passes) * B * B / 1e9,
                        ms=seconds * 1e3,
                        fraction=useful / (seconds * PEAK["bf16"]),
                    )
                )
    return out


def markdown() -> str:
    lines = [
        "| D | implementation | work | matmul units | W traffic (GB) | predicted ms | fraction of bf16 peak |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows():
        lines.append(
            f"| {r['d']} | {r['who']} | {r['what']} | {r['units']:g} | {r['hbm_gb']:.1f} | {r['ms']:.1f} "
            f"| {r['fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(f"B = {B}, H200: bf16 {PEAK['bf16'] / 1e12:.0f} TFLOP/s, HBM {HBM / 1e12:.1f} TB/s\n")
    print(markdown())
