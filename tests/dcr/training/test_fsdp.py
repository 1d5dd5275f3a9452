"""The stages with their decoder layers sharded over ranks (FSDP2, `--fsdp`) on 2 gloo processes: the same
weights as one process and as plain data parallelism (fp32, 3 steps, Circle and InfoNCE, full layers and
LoRA); sharded checkpoints resume at another world size (2 ranks -> 1, 1 -> 2) and after a rank is killed
mid-step; `dcr plan` predicts the trained state each rank holds."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dcr_helpers import tiny_model_dir
from spawn_ranks import free_port
from stage_ranks import assert_same_weights, refine_config, run_stage, stage_worker

from dcr.config import ConfigError
from dcr.planning.memory import Setting, plan
from dcr.planning.table import architecture
from dcr.training.align_config import AlignConfig
from dcr.training.jsonl_log import read_log
from dcr.training.refine import refine

pytest.importorskip("transformers")


@pytest.mark.parametrize(("loss", "batch"), [("circle", 16), ("infonce", 16), ("circle", 14)])
def test_sharded_refine_learns_the_single_process_and_data_parallel_weights(tmp_path, loss, batch):
    """14 prompts: 7 rows per rank at micro-batch 3, a short last micro-batch."""
    one = run_stage("refine", refine_config(tmp_path, "one", loss=loss, batch_size=batch), world=1)
    plain = run_stage("refine", refine_config(tmp_path, "dp", loss=loss, batch_size=batch), world=2)
    sharded = run_stage("refine", refine_config(tmp_path, "fsdp", loss=loss, fsdp=True, batch_size=batch), world=2)
    assert_same_weights(one, sharded)
    assert_same_weights(plain, sharded)
    assert json.loads((tmp_path / "fsdp" / "model" / "dcr.json").read_text())["world_size"] == 2
    held = {name: _trained_state_mb(tmp_path / name) for name in ("one", "fsdp")}
    assert 0.45 < held["fsdp"] / held["one"] < 0.55, held  # sharded: half on each of 2 ranks
    arch = architecture(str(tiny_model_dir("llama")))  # `dcr plan` predicts both
    for name, setting in (("one", Setting(layer=2, weights="fp32")), ("fsdp", Setting(layer=2, gpus=2, fsdp=True))):
        parts = plan(arch, setting)
        assert held[name] == pytest.approx((2 * parts["gradients"] + parts["optimizer"]) / 2**20, rel=0.02, abs=2e-3)


def _trained_state_mb(run) -> float:
    """Rank 0's trained weights, gradients and AdamW state after the last step, from the metrics log."""
    return [r for r in read_log(run / "metrics.jsonl") if "loss" in r][-1]["trained_state_mb"]


def test_sharded_refine_with_lora_learns_the_single_process_weights(tmp_path):
    one = run_stage("refine", refine_config(tmp_path, "one", lora=True, lora_r=4), world=1)
    sharded = run_stage("refine", refine_config(tmp_path, "fsdp", lora=True, lora_r=4, fsdp=True), world=2)
    assert_same_weights(one, sharded)


@pytest.mark.parametrize(("batch", "micro"), [(16, 4), (9, 4)], ids=["even", "uneven"])
def test_sharded_align_learns_the_single_process_weights(tmp_path, batch, micro):
    """9 pairs on 2 ranks at micro-batch 4: 5 and 4 rows, as many micro-batches on both (each a collective)."""
    config = AlignConfig(
        model=str(tiny_model_dir("llama")), examples=40, refusal_share=0.25, max_length=32, batch_size=batch,
        micro_batch_size=micro, steps=3, lr=1e-3, save_every=0, output_dir=str(tmp_path / "one"), progress=False,
    )  # fmt: skip
    one = run_stage("align", config, world=1)
    sharded = run_stage("align", dataclasses.replace(config, output_dir=str(tmp_path / "fsdp"), fsdp=True), world=2)
    assert_same_weights(one, sharded)


def _forget_after_first_step(run) -> None:
    """As if the run had died after the checkpoint of step 1."""
    shutil.rmtree(run / "model")
    for step in (2, 3):
        shutil.rmtree(run / "checkpoints" / f"step-{step:08d}")


@pytest.mark.parametrize(
    ("first", "then"),
    [((2, True), (1, False)), ((1, False), (2, True)), ((2, True), (2, True)), ((2, True), (2, False))],
)
def test_a_run_resumes_at_another_world_size(tmp_path, first, then):
    (world, fsdp), (world_then, fsdp_then) = first, then
    config = refine_config(tmp_path, "run", save_every=1, keep_checkpoints=0, fsdp=fsdp)
    full = run_stage("refine", config, world=world)
    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    assert (step / ".metadata").is_file() == fsdp  # sharded: torch.distributed.checkpoint, a file per rank
    assert len(list(step.glob("*.distcp"))) == (world if fsdp else 0)
    _forget_after_first_step(tmp_path / "run")
    resumed = run_stage("refine", dataclasses.replace(config, resume=True, fsdp=fsdp_then), world=world_then)
    assert_same_weights(full, resumed)


def _dying_worker(rank: int, world: int, port: int, config) -> None:
    """Rank 1 dies (SIGKILL-like exit) in the middle of the third step, after checkpoints 1 and 2."""
    from dcr.training import refine as refine_module

    stage_backward = refine_module._RefineStage.backward

    def backward(self, step: int) -> dict:
        if rank == 1 and step == 2:
            os._exit(9)
        return stage_backward(self, step)

    refine_module._RefineStage.backward = backward
    stage_worker(rank, world, port, "refine", config)


def test_a_killed_rank_then_resume_gives_the_uninterrupted_weights(tmp_path):
    config = refine_config(tmp_path, "full", save_every=1, keep_checkpoints=0, fsdp=True)
    full = run_stage("refine", config, world=2)
    killed = dataclasses.replace(config, output_dir=str(tmp_path / "killed"))
    with pytest.raises(Exception):  # noqa: B017 - the surviving rank fails on the lost peer, spawn raises either
        mp.spawn(_dying_worker, args=(2, free_port(), killed), nprocs=2, join=True)
    steps = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert steps == ["step-00000001", "step-00000002"] and not (tmp_path / "killed" / "model").exists()
    resumed = run_stage("refine", dataclasses.replace(killed, resume=True), world=2)
    assert_same_weights(full, resumed)


def test_bf16_weights_train_fp32_masters_and_come_back_in_bf16(tmp_path):
    """With bf16 weights the sharded trained layers are fp32 master weights (LoRA's frozen base layers stay
    bf16), the saved model is bf16 again, and a checkpoint of such a run is refused by a run that would
    train bf16 weights."""
    common = dict(dtype="bf16", precision="bf16", save_every=1, keep_checkpoints=0)
    config = refine_config(tmp_path, "bf16", fsdp=True, **common)
    saved = run_stage("refine", config, world=2)
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    state = json.loads((tmp_path / "bf16" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["trained_dtype"] == "float32"
    lora = run_stage("refine", refine_config(tmp_path, "lora", fsdp=True, lora=True, lora_r=4, **common), world=2)
    assert {t.dtype for t in lora.values()} == {torch.bfloat16}
    _forget_after_first_step(tmp_path / "bf16")
    with pytest.raises(ConfigError, match="trained float32 weights, this run would train bfloat16"):
        refine(dataclasses.replace(config, resume=True, fsdp=False))


def test_lora_base_layers_keep_their_dtype_when_sharded(tmp_path):
    from dcr.modeling.model import load_model
    from dcr.modeling.sharding import shard_layers
    from dcr.modeling.trainable import add_lora, freeze_above

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model, _ = load_model(tiny_model_dir("llama"), dtype="bf16")
        model = add_lora(freeze_above(model, 2), 2, r=4)
        shard_layers(model, compute_dtype=torch.bfloat16, mean=True)
        dtypes = {n: p.dtype for n, p in model.named_parameters() if ".layers.0." in n}
        assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
        assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    finally:
        dist.destroy_process_group()
