"""`dcr evaluate` under several processes: each rank generates its share of every set, the responses are
gathered in order, and rank 0 writes the report; the results equal one process's."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
from dcr_helpers import tiny_model_dir
from spawn_ranks import spawn_ranks

from dcr.cli import main

pytest.importorskip("transformers")


def _argv(out) -> list[str]:
    return ["evaluate", "--model", str(tiny_model_dir("llama")), "--output-dir", str(out), "--sets", "xstest_safe",
            "xstest_unsafe", "--limit", "7", "--max-new-tokens", "3", "--batch-size", "2", "--layer", "2",
            "--no-perplexity", "--no-progress", "--device", "cpu"]  # fmt: skip


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        assert main(_argv(out)) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_ranks_give_one_process_results(tmp_path):
    assert main(_argv(tmp_path / "one")) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = tmp_path / "two" / "completions.jsonl"
    spawn_ranks(_worker, 2, (port, str(tmp_path / "two")), done=results.exists)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert two["summary"] == pytest.approx(one["summary"], rel=1e-6)  # threads change float sums only
    lines = [(tmp_path / d / "completions.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert lines[0] == lines[1]
