"""Every Triton kernel variant and every config the launcher may pick compiles for sm_80 and sm_90 and fits:
shared memory within the target's limit, no register spills, and on sm_90 the 16-bit similarity dots
lowered to warp-group MMA. Compiled on the CPU (no GPU needed); the table is written to
benchmarks/results/triton_resources.{json,md}."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "triton_resources"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JIT functions, not the interpreter
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--out", str(OUT)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=1200)
    return json.loads(OUT.with_suffix(".json").read_text())


def test_every_variant_is_compiled_from_real_launches(rows):
    """Both targets, both kernels, the three loss families and the guide-masked softmax (GISTEmbed), three
    dtypes, both backward term layouts (the sigmoid loss and the guided softmax have no column term), both fp32
    dot precisions; each captured from the launcher at aligned and ragged batches (B = 1000 and 65536) and
    bound by Triton's binder, which, with the sizes unspecialised and W's stride padded, gives one compile per
    variant for every shape."""
    keys = {(r["capability"], r["kernel"], r["loss"], r["dtype"], r["col_term"], r["precision"], r["guided"])
            for r in rows}  # fmt: skip
    dtypes = 1 + 1 + 2  # fp32 (tf32 and IEEE dots), bf16, fp16
    guided_dtypes = 3 * 2  # the guide's dots are fp32 (tf32 or IEEE) whatever the model's dtype
    forward, backward = 3 * dtypes, (2 * 2 + 1) * dtypes  # the families; the term layouts of each
    assert len(keys) == 2 * (forward + backward + 2 * guided_dtypes)  # targets x variants
    for r in rows:
        assert {"1000x130", "65536x130", "1000x1536", "65536x1536"} <= set(r["shapes"]), r


def test_every_kept_config_fits(rows):
    limits = {80: 163 * 1024, 90: 227 * 1024}
    for r in rows:
        where = f"{r['kernel']} {r['loss']} {r['dtype']} sm_{r['capability']} {r['block']} w{r['warps']} s{r['stages']}"
        assert r["shared"] <= limits[r["capability"]], f"shared memory over the limit: {where}"
        assert r["spill"] == 0, f"{r['spill']} bytes spilled: {where}"
        assert r["registers"] <= 255, where


def test_hopper_uses_warp_group_mma(rows):
    for r in rows:
        if r["capability"] == 90 and r["dtype"] in ("bf16", "fp16"):
            assert r["mma"] == "wgmma", f"{r['kernel']} {r['loss']} {r['dtype']} {r['block']}: {r['mma']}"
        if r["capability"] == 90 and r["precision"] == "tf32":
            assert r["mma"] == "wgmma"
        if r["capability"] == 80 and r["precision"] != "ieee":
            assert r["mma"] == "mma.sync"


def _best(rows, kernel, loss, want_best=None, guided=False):
    found = [
        r["sass"]
        for r in rows
        if "sass" in r
        and r["kernel"] == kernel
        and r["loss"] == loss
        and r["dtype"] == "bf16"
        and r["guided"] == guided
        and (want_best is None or r["want_best"] == want_best)
    ]
    assert found, (kernel, loss, want_best)
    return min(found, key=lambda c: c["epilogue_per_pair"])


def test_softmax_forward_epilogue_within_budget(rows):
    """Read from the sm_90 SASS: at most 12 instructions per pair per thread outside the K loop on an
    interior tile (the best config), with the best column tracked or not, and one exp2 per pair."""
    for want_best in (True, False):
        counts = _best(rows, "similarity_stats_kernel", "softmax", want_best)
        assert counts["epilogue_per_pair"] <= 12, counts
        assert counts["mufu_per_pair"] <= 1.1, counts


def test_circle_forward_epilogue_within_budget(rows):
    """Read from the sm_90 SASS: Circle's forward at most 20 instructions per pair per thread outside the K
    loop on an interior tile that keeps its set references (the best config), one exp2 per pair for both
    sets."""
    counts = _best(rows, "similarity_stats_kernel", "circle", want_best=False)
    assert counts["epilogue_per_pair"] <= 20, counts
    assert counts["mufu_per_pair"] <= 1.05, counts


def test_sigmoid_forward_epilogue_within_budget(rows):
    """Read from the sm_90 SASS: the sigmoid loss's forward at most 28 instructions per pair per thread
    outside the K loop on an interior tile (the best config), with one exp2 per pair: softplus's logarithm is
    taken once per row and tile, of the product of the tile's factors (a logarithm per pair lowers to a
    software routine: 41)."""
    counts = _best(rows, "similarity_stats_kernel", "sigmoid")
    assert counts["epilogue_per_pair"] <= 28, counts
    assert counts["mufu_per_pair"] <= 1.05, counts


def test_guided_forward_epilogue_within_budget(rows):
    """Read from the sm_90 SASS: the guide's mask (GISTEmbed) adds at most 10 instructions per pair to the
    softmax forward's epilogue (9.6 measured: the threshold compare, the protected pair and the select; its GEMM
    is a second K loop), still one exp2 per pair. Testing for the protected pair only on the tiles that hold
    one made it 31: the branch keeps the mask in registers across it."""
    counts = _best(rows, "similarity_stats_kernel", "softmax", want_best=False, guided=True)
    plain = _best(rows, "similarity_stats_kernel", "softmax", want_best=False)
    assert counts["epilogue_per_pair"] <= plain["epilogue_per_pair"] + 10, (counts, plain)
    assert counts["mufu_per_pair"] <= 1.1, counts


def test_one_exponential_per_pair_and_term(rows):
    """Every forward takes one exp2 per pair (Circle's both sets included); the backward one per pair and
    term (the sigmoid loss's backward adds a reciprocal)."""
    for r in rows:
        if "sass" not in r:
            continue
        if r["kernel"] == "similarity_stats_kernel":
            assert r["sass"]["mufu_per_pair"] <= 1.1, r
        elif r["loss"] == "sigmoid":  # the slope sigmoid(x): one exp2 and one reciprocal
            assert r["sass"]["mufu_per_pair"] <= 2.05, r
        else:
            assert r["sass"]["mufu_per_pair"] <= (2.05 if r["col_term"] else 1.05), r
