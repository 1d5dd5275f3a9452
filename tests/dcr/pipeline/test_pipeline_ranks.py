"""`dcr pipeline` under several processes (gloo, as torchrun would start them): every rank runs the same steps,
rank 0 alone logs and writes the markers and the comparison, a rerun skips on every rank, and the results
equal one process's."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
from dcr_helpers import tiny_model_dir
from safetensors.torch import load_file
from spawn_ranks import free_port, launcher_env, spawn_ranks
from test_pipeline import TINY

from dcr.pipeline.run import ARMS, MARKER, run_pipeline

pytest.importorskip("transformers")

# In fp32: the quick profile's bf16 rounds differently when the ranks change the order of a reduction.
FP32 = {
    **TINY,
    "refine": {**TINY["refine"], "precision": "fp32"},
    "align": {**TINY["align"], "precision": "fp32"},
    "evaluate": {**TINY["evaluate"], "dtype": "fp32"},
}


def _worker(rank: int, world: int, port: int, model: str, out: str, fsdp: bool) -> None:
    launcher_env(rank, world, port)
    try:
        runs = []
        for _ in range(2):  # the second run finds every step finished
            messages: list[str] = []
            result = run_pipeline(
                model,
                out,
                "quick",
                seeds=[0],
                overrides=FP32,
                device="cpu",
                progress=False,
                fsdp=fsdp,
                log=messages.append,
            )
            runs.append(
                {"messages": messages, "summaries": result["summaries"], "report": str(result["paths"]["report"])}
            )
        with open(f"{out}/rank-{rank}.json", "w") as f:
            json.dump(runs, f)
        dist.barrier()  # every rank has written what the test reads
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("fsdp", [False, True], ids=["data-parallel", "fsdp"])
def test_two_ranks_run_the_steps_of_one_process(tmp_path, fsdp):
    one, two, model = tmp_path / "one", tmp_path / "two", str(tiny_model_dir("llama"))
    single = run_pipeline(
        model, one, "quick", seeds=[0], overrides=FP32, device="cpu", progress=False, log=lambda m: None
    )
    two.mkdir()
    done = lambda: all((two / f"rank-{r}.json").exists() for r in range(2))  # noqa: E731
    spawn_ranks(_worker, 2, (free_port(), model, str(two), fsdp), done=done)
    ranks = [json.loads((two / f"rank-{r}.json").read_text()) for r in range(2)]
    first, again = ranks[0]
    assert first["messages"] and all(m.startswith("[run]") for m in first["messages"])
    assert again["messages"] and all(m.startswith("[skip]") for m in again["messages"])
    assert ranks[1][0]["messages"] == ranks[1][1]["messages"] == [], "only rank 0 logs"
    for run in (*ranks[0], *ranks[1]):
        assert run["summaries"].keys() == single["summaries"].keys()
        for label, summary in single["summaries"].items():
            assert run["summaries"][label] == pytest.approx(summary, rel=1e-5), label
        assert run["report"] == str(two / "report.md")
    assert (two / "report.md").is_file() and (two / "comparison.json").is_file()
    steps = sorted(p.parent.relative_to(one) for p in one.rglob(MARKER))
    assert steps == sorted(p.parent.relative_to(two) for p in two.rglob(MARKER))
    assert json.loads((two / "seed-0" / "dcr" / MARKER).read_text())["model"] == str(two / "seed-0" / "dcr" / "model")
    assert json.loads((two / "seed-0" / "dcr" / "model" / "dcr.json").read_text()).get("fsdp", False) == fsdp
    for arm in ("dcr", *ARMS):
        a, b = (load_file(root / "seed-0" / arm / "model" / "model.safetensors") for root in (one, two))
        for name, tensor in a.items():
            assert float((b[name] - tensor).norm() / tensor.norm().clamp(min=1e-12)) < 1e-5, (arm, name)
