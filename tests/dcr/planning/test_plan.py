"""`dcr plan`: the architecture read from a configuration counts the model's parameters and LoRA's adapters
exactly; the plan's parts follow its settings (sharding divides what FSDP shards, LoRA shrinks the
trained state, checkpointing the activations); the largest batch is the edge of the budget; the command
prints a table, JSON and files, and refuses a bad size."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers
from dcr_helpers import tiny_model_dir

from dcr.cli import main
from dcr.config import ConfigError
from dcr.modeling.trainable import add_lora, freeze_above, trainable_parameters
from dcr.planning.config import PlanConfig
from dcr.planning.memory import PRESETS, Architecture, Setting, largest_batch, plan
from dcr.planning.table import architecture


def _model(kind: str, tied: bool):
    sizes = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                 num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    config = (transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config)(**sizes)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
def test_the_architecture_counts_every_parameter(kind, tied):
    model = _model(kind, tied)
    arch = Architecture.from_config(model.config)
    assert arch.params == sum(p.numel() for p in model.parameters())
    layer = model.model.layers[0]
    assert arch.layer_params == sum(p.numel() for p in layer.parameters())


def test_lora_adapters_are_counted_as_peft_makes_them():
    model = freeze_above(_model("llama", True), 2)
    peft = add_lora(model, 2, r=4)
    arch = Architecture.from_config(model.config)
    assert sum(p.numel() for p in trainable_parameters(peft).values()) == 2 * arch.lora_params(4)


def test_the_presets_are_the_published_sizes():
    assert 1.4e9 < Architecture(**PRESETS["qwen2.5-1.5b"]).params < 1.6e9
    assert 7.9e9 < Architecture(**PRESETS["llama-3-8b"]).params < 8.1e9
    assert 70.0e9 < Architecture(**PRESETS["llama-3-70b"]).params < 71.0e9


def test_sharding_divides_what_fsdp_shards():
    arch = Architecture(**PRESETS["llama-3-8b"])
    one = plan(arch, Setting(layer=16, gpus=8))
    sharded = plan(arch, Setting(layer=16, gpus=8, fsdp=True))
    # trained layers: fp32 master weights, shards of 1/8: gradients 4 bytes / 8 against bf16's 2 bytes
    assert sharded["gradients"] == pytest.approx(one["gradients"] * 2 / 8, rel=1e-6)
    assert sharded["optimizer"] == 2 * sharded["gradients"]
    assert sharded["weights"] < one["weights"] / 2 and sharded["fsdp_working"] > 0
    assert sharded["activations"] == one["activations"]
    lora = plan(arch, Setting(layer=16, lora_r=16))
    assert lora["gradients"] < one["gradients"] / 50 and lora["weights"] > one["weights"]
    checkpointed = plan(arch, Setting(layer=16, gradient_checkpointing=True))
    assert checkpointed["activations"] < one["activations"] / 4


def test_the_largest_batch_is_the_edge_of_the_budget():
    arch = Architecture(**PRESETS["qwen2.5-1.5b"])
    setting = Setting(layer=14, gpus=4, fsdp=True)
    budget = 24 * 2**30
    batch = largest_batch(arch, setting, budget)
    assert batch is not None and batch % 4 == 0
    assert plan(arch, dataclasses.replace(setting, batch=batch))["peak"] <= budget
    assert plan(arch, dataclasses.replace(setting, batch=batch + 4))["peak"] > budget
    assert largest_batch(arch, setting, 2**20) is None  # the model alone does not fit


def test_a_model_folder_is_read_without_its_weights():
    arch = architecture(str(tiny_model_dir("llama")))
    assert arch.layers == 4 and arch.tied
    assert architecture(str(tiny_model_dir("llama") / "config.json")) == arch


def test_the_command_prints_the_table_and_writes_it(tmp_path, capsys):
    argv = ["plan", "--model", "llama-3-8b", "--layer", "16", "--gpus", "8", "--gpu-memory", "80GB"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| peak per GPU |" in out and "FSDP + LoRA" in out and "largest contrastive batch" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert set(saved["columns"]) == {"full", "LoRA", "FSDP", "FSDP + LoRA"}
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["columns"]["FSDP"] == saved["columns"]["FSDP"] and printed["columns"]["FSDP"]["fits"]


def test_a_bad_memory_size_is_refused():
    with pytest.raises(ConfigError, match="80 apples"):
        PlanConfig(gpu_memory="80 apples").memory_bytes()
    assert PlanConfig(gpu_memory="80GB").memory_bytes() == 80 * 10**9
    assert PlanConfig(gpu_memory="24GiB").memory_bytes() == 24 * 2**30
