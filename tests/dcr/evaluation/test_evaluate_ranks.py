"""`dcr evaluate` under several processes: each rank generates its share of every set, the responses are
gathered in order, and rank 0 writes the report; the results equal one process's."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
from dcr_helpers import tiny_model_dir
from spawn_ranks import free_port, launcher_env, spawn_ranks

from dcr.cli import main

pytest.importorskip("transformers")


def _argv(out) -> list[str]:
    return ["evaluate", "--model", str(tiny_model_dir("llama")), "--output-dir", str(out), "--sets", "xstest_safe",
            "xstest_unsafe", "--limit", "7", "--max-new-tokens", "3", "--batch-size", "2", "--layer", "2",
            "--no-perplexity", "--no-progress", "--device", "cpu"]  # fmt: skip


def _worker(rank: int, world: int, port: int, out: str) -> None:
    launcher_env(rank, world, port)
    try:
        assert main(_argv(out)) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_ranks_give_one_process_results(tmp_path):
    assert main(_argv(tmp_path / "one")) == 0
    results = tmp_path / "two" / "completions.jsonl"
    spawn_ranks(_worker, 2, (free_port(), str(tmp_path / "two")), done=results.exists)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert two["summary"] == pytest.approx(one["summary"], rel=1e-6)  # threads change float sums only
    lines = [(tmp_path / d / "completions.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert lines[0] == lines[1]
