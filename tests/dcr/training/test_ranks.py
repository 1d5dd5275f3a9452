"""Both stages under several processes (gloo, as torchrun would start them): 2 ranks with a global batch of
16 learn the same weights as 1 process with the same 16 prompts, for both loss strategies; a 2-rank run
killed between checkpoints resumes to the uninterrupted run's weights; rank 0 alone writes the run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from dcr_helpers import tiny_model_dir
from spawn_ranks import free_port, launcher_env
from stage_ranks import assert_same_weights, refine_config, run_stage

from dcr.training.align_config import AlignConfig
from dcr.training.jsonl_log import read_log
from dcr.training.refine import refine

pytest.importorskip("transformers")


@pytest.mark.parametrize("strategy", ["ring", "gather"])
@pytest.mark.parametrize("loss", ["circle", "infonce"])
def test_refine_on_two_ranks_learns_the_single_process_weights(tmp_path, strategy, loss):
    one = run_stage("refine", refine_config(tmp_path, "one", loss=loss), world=1)
    two = run_stage("refine", refine_config(tmp_path, "two", loss=loss, strategy=strategy), world=2)
    assert_same_weights(one, two)
    log = read_log(tmp_path / "two" / "metrics.jsonl")
    assert [r["world_size"] for r in log if "loss" in r] == [2, 2, 2]
    assert json.loads((tmp_path / "two" / "model" / "dcr.json").read_text())["world_size"] == 2
    single = [r["loss"] for r in read_log(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in log if "loss" in r] == pytest.approx(single, rel=1e-5)


def test_align_on_two_ranks_learns_the_single_process_weights(tmp_path):
    config = AlignConfig(
        model=str(tiny_model_dir("llama")), examples=40, refusal_share=0.25, max_length=32, batch_size=16,
        micro_batch_size=4, steps=3, lr=1e-3, save_every=0, output_dir=str(tmp_path / "one"), progress=False,
    )  # fmt: skip
    one = run_stage("align", config, world=1)
    two = run_stage("align", dataclasses.replace(config, output_dir=str(tmp_path / "two")), world=2)
    assert_same_weights(one, two)


def test_two_rank_run_killed_between_checkpoints_resumes_to_the_same_weights(tmp_path):
    config = refine_config(tmp_path, "full", save_every=1, keep_checkpoints=0)
    full = run_stage("refine", config, world=2)
    run = tmp_path / "full"
    shutil.rmtree(run / "model")
    for step in (2, 3):  # as if the run had died after the checkpoint of step 1
        shutil.rmtree(run / "checkpoints" / f"step-{step:08d}")
    resumed = run_stage("refine", dataclasses.replace(config, resume=True), world=2)
    assert_same_weights(full, resumed)


def _failing_worker(rank: int, world: int, port: int, config, errors: str) -> None:
    if rank == 1:  # this rank's data is missing: it fails while the other waits in a collective
        config = dataclasses.replace(config, data=config.data + ".missing")
    launcher_env(rank, world, port)
    try:
        refine(config)
    except Exception as error:  # spawn reports whichever rank it sees first: keep each rank's own error,
        with open(os.path.join(errors, f"rank{rank}.txt"), "w") as f:  # written before the group closes
            f.write(f"{type(error).__name__}: {error}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_failing_rank_ends_the_run_with_its_error(tmp_path):
    config = refine_config(tmp_path, "fails")
    errors = tmp_path / "errors"
    errors.mkdir()
    with pytest.raises(mp.ProcessRaisedException):
        mp.spawn(_failing_worker, args=(2, free_port(), config, str(errors)), nprocs=2, join=True)
    assert "missing" in (errors / "rank1.txt").read_text()
