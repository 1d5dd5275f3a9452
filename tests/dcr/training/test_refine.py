"""The DCR stage end to end on a tiny model: frozen layers, saved model, identical resume, LoRA, CLI errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from dcr_helpers import tiny_model_dir, tiny_refine_config
from safetensors.torch import load_file

from dcr.cli import main
from dcr.config import ConfigError
from dcr.training.jsonl_log import read_log
from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig

transformers = pytest.importorskip("transformers")
LAYER = 2


@pytest.fixture
def config(tmp_path):
    return tiny_refine_config(tmp_path, layer=LAYER)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _above(name: str) -> bool:
    return "layers." not in name or int(name.split("layers.")[1].split(".")[0]) >= LAYER


def test_refine_trains_only_layers_up_to_l_and_saves_a_plain_model(config):
    base = _weights(tiny_model_dir("llama"))
    out = refine(config)
    refined = _weights(out)
    assert set(refined) == set(base)
    for name, tensor in base.items():
        if _above(name):
            assert torch.equal(refined[name], tensor), f"{name} above layer l changed"
        else:
            assert not torch.equal(refined[name], tensor), f"{name} below layer l did not train"
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert json.loads((out / "dcr.json").read_text())["layer"] == LAYER
    log = read_log(out.parent / "metrics.jsonl")
    steps = [r for r in log if "split" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "nn_accuracy", "cross_class_cosine", "grad_norm", "lr"} <= set(steps[0])
    assert [r["step"] for r in log if r.get("split") == "validation"] == [0, 2, 4]


def test_resumed_run_matches_uninterrupted(config, tmp_path):
    full = _weights(refine(config))
    run = tmp_path / "run"
    full_log = read_log(run / "metrics.jsonl")
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # as if the run had died after step 2
    with pytest.raises(ConfigError, match="--resume"):
        refine(config)
    state_file = run / "checkpoints" / "step-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]["center"]  # as written before the option existed: read as its default
    state_file.write_text(json.dumps(state))
    config.resume = True
    resumed = _weights(refine(config))
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full_log]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(run / "metrics.jsonl")] == strip
    config.lr = 1.0
    shutil.rmtree(run / "model")
    with pytest.raises(ConfigError, match="settings changed"):
        refine(config)


def test_lora_run_merges_adapters_and_keeps_upper_layers(config):
    pytest.importorskip("peft")
    config.lora, config.lora_r, config.eval_every = True, 4, 0
    base = _weights(tiny_model_dir("llama"))
    refined = _weights(refine(config))
    assert set(refined) == set(base), "adapters are merged into plain weights"
    assert all(torch.equal(refined[n], t) for n, t in base.items() if _above(n))
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(refined[q0], base[q0])


def test_cli_reads_config_file_and_flags(config, tmp_path, capsys):
    cfg_file = tmp_path / "refine.yaml"
    values = {k: v for k, v in vars(config).items() if k not in ("steps", "eval_every")}
    cfg_file.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "\nsteps: 9\n")
    assert main(["refine", "--config", str(cfg_file), "--steps", "1", "--layer", "0.5", "--save-every", "0"]) == 0
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log if "split" not in r] == [1]
    assert json.loads((tmp_path / "run" / "model" / "dcr.json").read_text())["layer"] == 2
    assert "refined model saved" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "7"], "layer index must be in [1, 4]"),
        (["--layer", "1.5"], "layer as a fraction"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--loss", "triplet"], "loss must be one of"),
        (["--batch-size", "9"], "multiple of the number of classes"),
        (["--classes", "toxic", "benign"], "two prompts each"),
        (["--lr", "fast"], "cannot use 'fast' as float"),
    ],
)
def test_cli_bad_settings_give_clear_errors(config, tmp_path, capsys, args, message):
    base = [
        "refine",
        "--model",
        config.model,
        "--data",
        config.data,
        "--output-dir",
        str(tmp_path / "x"),
        "--steps",
        "1",
        "--no-progress",
        "--batch-size",
        "8",
    ]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_config_file_errors(tmp_path):
    from dcr.config import build

    bad = tmp_path / "c.json"
    bad.write_text('{"lerning_rate": 1}')
    with pytest.raises(ConfigError, match="unknown setting"):
        build(RefineConfig, bad, {})
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        build(RefineConfig, bad, {})
    with pytest.raises(ConfigError, match="does not exist"):
        build(RefineConfig, tmp_path / "none.yaml", {})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 1e-4\nlayer: 12\nclasses: [a, b]\nlora: true\n")
    cfg = build(RefineConfig, yaml_file, {"lora": False})
    assert (cfg.lr, cfg.layer, cfg.classes, cfg.lora) == (1e-4, 12, ["a", "b"], False)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    text = capsys.readouterr().out
    for name in RefineConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text


def test_shipped_configs_are_valid():
    from pathlib import Path

    from dcr.config import build

    files = sorted((Path(__file__).resolve().parents[3] / "configs").glob("dcr_*.yaml"))
    assert files
    for path in files:
        build(RefineConfig, path, {})


def test_lora_without_peft_is_a_clear_error(monkeypatch):
    import sys

    from dcr.modeling.trainable import add_lora

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="optional dependency peft"):
        add_lora(torch.nn.Linear(2, 2), 1)


def test_gradient_checkpointing_gives_the_same_weights(config, tmp_path):
    config.save_every = 0
    plain = _weights(refine(config))
    config.gradient_checkpointing, config.output_dir = True, str(tmp_path / "ckpt")
    checkpointed = _weights(refine(config))
    for name, tensor in plain.items():
        torch.testing.assert_close(checkpointed[name], tensor, rtol=1e-6, atol=1e-7)


def test_lora_adapter_folder_loads_onto_the_base_model(config, tmp_path):
    peft = pytest.importorskip("peft")
    config.lora, config.save_every = True, 0
    merged = _weights(refine(config))
    config.lora_merge, config.output_dir = False, str(tmp_path / "adapter")
    folder = refine(config)
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    loaded = peft.PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    for name, tensor in merged.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=1e-6, atol=1e-7)
