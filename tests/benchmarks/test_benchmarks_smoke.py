"""The benchmark suite stays runnable and honest: every script end to end at tiny sizes on CPU, and every
provider computing the same loss as ours (so the timings compare like with like)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import baselines  # noqa: E402
import budget  # noqa: E402
import judge_probe  # noqa: E402
import memory  # noqa: E402
import plot  # noqa: E402
import probe  # noqa: E402
import providers  # noqa: E402
import report  # noqa: E402
import sweep  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("loss", providers.LOSSES)
def test_every_provider_computes_our_loss_and_gradients(loss):
    """Same value and gradients as the chunked backend (PML's reducer averages rows with a loss > 0,
    which here are all the counted rows)."""
    batch = providers.make_batch(loss, 48, 12, torch.float64, CPU, seed=3)
    want = providers.step(loss, "chunked", CPU).forward_backward(batch)
    want_grads = [x.grad.clone() for x in batch.inputs()]
    for name in providers.PROVIDERS:
        if name == "chunked" or not providers.supports(name, loss):
            continue
        try:
            step = providers.step(loss, name, CPU)
        except providers.Unavailable:
            continue
        for x in batch.inputs():
            x.grad = None
        got = step.forward_backward(batch)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)
        for g, w in zip((x.grad for x in batch.inputs()), want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12, msg=name)
        torch.testing.assert_close(step.forward(batch), want, rtol=1e-9, atol=1e-12, msg=name)


def test_gradcache_mini_batches_do_not_change_the_result():
    q, k = torch.randn(37, 5, dtype=torch.float64), torch.randn(37, 5, dtype=torch.float64)
    whole = baselines.gradcache_info_nce(q, k, 0.1, backward=False, mini_batch=37)
    torch.testing.assert_close(baselines.gradcache_info_nce(q, k, 0.1, backward=False, mini_batch=4), whole)
    torch.testing.assert_close(baselines.dense_info_nce(q, k, 0.1), whole)


def test_pytest_benchmark_suites_run_in_fast_mode():
    env = {**os.environ, "DCR_BENCH_SIZES": "32", "DCR_BENCH_DIMS": "8", "DCR_BENCH_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "pytest", str(BENCH / "test_bench_losses.py"), "-q", "--benchmark-disable"]
    run = subprocess.run([*cmd, "-p", "no:cacheprovider"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout


def test_peak_memory_sees_a_known_allocation():
    """64 MiB is above glibc's largest mmap threshold, so it is fresh resident memory in any process."""
    batch = providers.make_batch("info_nce", 8, 4, torch.float32, CPU)
    size = 64 << 20
    res = memory.peak_above_inputs(lambda: torch.ones(size // 4).sum(), batch, with_grads=True)
    assert size - (1 << 20) <= res["extra_bytes"] < size + (16 << 20)


def test_probe_in_a_fresh_process_and_its_memory_cap():
    res = probe.spawn("info_nce", "dense", 256, 8, "float32", "cpu", "fwd_bwd", warmup=1, repeats=2, timeout_s=120)
    assert res["ok"] and len(res["times_s"]) == 2 and res["extra_bytes"] > 0
    capped = probe.spawn("info_nce", "dense", 4096, 8, "float32", "cpu", "fwd_bwd", repeats=0, cap_bytes=16 << 20)
    assert not capped["ok"] and any(sign in capped["error"] for sign in budget.OOM_SIGNS), capped


def test_bisection_brackets_the_limit_and_reports_lower_bounds():
    def fits_below(limit):
        return lambda b: "ok" if b <= limit else "over"

    found = budget.largest_batch(fits_below(5000), 1024, 1 << 16, 0.05)
    assert found == {"largest": 4864, "smallest_failing": 5120, "bound": "memory"}
    assert budget.largest_batch(fits_below(10**9), 1024, 4096, 0.05)["bound"] == "max-batch"
    timeout = budget.largest_batch(lambda b: "ok" if b < 4096 else "timeout", 1024, 1 << 16, 0.05)
    assert timeout == {"largest": 2048, "smallest_failing": None, "bound": "timeout"}


def test_sweep_then_plots_and_report(tmp_path):
    out = tmp_path / "sweep.json"
    sweep.main(
        [
            "--device",
            "cpu",
            "--sizes",
            "48",
            "--dims",
            "8",
            "--isolate",
            "none",
            "--repeats",
            "1",
            "--rounds",
            "2",
            "--out",
            str(out),
        ]
    )
    doc = json.loads(out.read_text())
    assert doc["machine"]["versions"]["torch"] and not doc["truncated"]
    ok = {(r["loss"], r["provider"], r["mode"], r["batch"]) for r in doc["rows"] if r["ok"]}
    for loss, provider in [
        ("info_nce", "chunked"),
        ("info_nce", "dense"),
        ("info_nce", "gradcache"),
        ("supcon", "pml"),
        ("circle", "pml"),
        ("circle", "dense"),
    ]:
        assert {(loss, provider, mode, 48) for mode in probe.MODES} <= ok
    assert all(len(r["times_s"]) == 2 for r in doc["rows"] if r["ok"])
    skipped = [r for r in doc["rows"] if not r["ok"]]
    assert all(r.get("skipped") for r in skipped)  # e.g. triton and inf-cl without CUDA

    pngs = plot.plot(plot.load_rows([out]), tmp_path)
    assert sorted(p.name for p in pngs) == ["bench_cpu_float32_d8_memory.png", "bench_cpu_float32_d8_time.png"]
    results = tmp_path / "RESULTS.md"
    results.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\nnotes\n")
    report.main(["--sweep", str(out), "--into", str(results), "--sizes", "48", "--target-batch", "48"])
    text = results.read_text()
    assert text.startswith("intro\n") and text.endswith("notes\n") and "old" not in text
    assert "| InfoNCE (cross) | 48 | dense |" in text and "| Circle (self) | 48 | pml |" in text


def test_ratio_formatting_handles_zero_and_missing_figures():
    ok = {"ok": True}
    assert report._ratio({**ok, "extra_bytes": 0}, {**ok, "extra_bytes": 4096}, "extra_bytes") == "0"
    assert report._ratio({**ok, "extra_bytes": 1}, {**ok, "extra_bytes": 0}, "extra_bytes") == "-"
    assert report._ratio({**ok, "median_s": 1.0}, {**ok, "median_s": 4.0}, "median_s") == "0.25"
    assert report._ratio({**ok, "median_s": 1.0}, {**ok, "median_s": 50.0}, "median_s") == "1/50"
    assert report._ratio(None, {**ok, "median_s": 1.0}, "median_s") == "-"


def test_integrations_benchmark_runs_end_to_end(tmp_path):
    pytest.importorskip("sentence_transformers")
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch is not installed")
    out = tmp_path / "integrations.json"
    cmd = [sys.executable, str(BENCH / "integrations.py"), "--scale", "128", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    rows = json.loads(out.read_text())["rows"]
    cases = ("cached_mnrl", "mnrl_joint_hardness", "cached_gist", "clip", "siglip")
    assert {(r["case"], r["provider"]) for r in rows} == {(c, p) for c in cases for p in ("ours", "library")}
    assert all(r.get("median_s", 0) > 0 for r in rows), [r for r in rows if "failed" in r]


def test_gpu_dcr_step_script_runs_on_a_tiny_model(tmp_path):
    pytest.importorskip("transformers")
    cmd = [sys.executable, str(BENCH / "gpu_dcr_step.py"), "--tiny", "--device", "cpu", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (result,) = tmp_path.glob("gpu_dcr_step_*_tiny.json")
    rows = json.loads(result.read_text())["rows"]
    assert [(r["lora"], r["fsdp"]) for r in rows] == [(True, False), (False, False), (False, True)]
    assert all(r["step_s"] > 0 and r["plan_gib"] > 0 for r in rows)


def test_judge_probe_fits_a_separable_judge_and_scores_it():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    y = x[:, 0] + 0.5 * x[:, 1] > 0
    w, b = judge_probe.fit_probe(x, y.float(), l2=1e-4)
    assert judge_probe.scores(x @ w + b > 0, y)["accuracy"] > 0.97
    assert judge_probe.scores(torch.tensor([True, False]), torch.tensor([True, True])) == {
        "accuracy": 0.5,
        "precision": 1.0,
        "recall": 0.5,
    }
    families = {r["family"] for r in judge_probe.labelled_responses()}
    assert judge_probe.DEVELOPMENT_FAMILY in families and len(families) >= 5
