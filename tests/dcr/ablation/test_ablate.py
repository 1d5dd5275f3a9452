"""`dcr ablate` on the tiny model: directions from the DCR stage's training prompts only, the false-refusal
direction orthogonal to the refusal direction, weights changed only along it (and by the coefficient), and
no residual-stream component left along it after a full ablation."""

from __future__ import annotations

import pytest
import torch
from dcr_helpers import tiny_model_dir
from safetensors.torch import load_file

from dcr.ablation import ablate as ablate_module
from dcr.ablation.ablate import ablate, training_prompts
from dcr.ablation.config import AblateConfig
from dcr.ablation.directions import estimate_directions
from dcr.ablation.weight_edit import residual_writers
from dcr.cli import main
from dcr.modeling.model import load_model
from dcr.prompts.eval_sets import DEFAULT_SETS, load_set
from dcr.prompts.sets import in_validation, load_labelled
from dcr.prompts.tables import normalise


def _config(tmp_path, **overrides) -> AblateConfig:
    values = dict(model=str(tiny_model_dir("llama")), output_dir=str(tmp_path / "ablate"), layer=2,
                  max_prompts=10, device="cpu", progress=False)  # fmt: skip
    return AblateConfig(**{**values, **overrides}).validate()


def test_directions_come_from_the_training_split_of_each_class(tmp_path, monkeypatch):
    seen: list[list[str]] = []
    real = ablate_module.embed_texts

    def recording(model, tokenizer, texts, layer, **kw):
        seen.append(list(texts))
        return real(model, tokenizer, texts, layer, **kw)

    monkeypatch.setattr(ablate_module, "embed_texts", recording)
    config = _config(tmp_path)
    ablate(config)
    labelled, _ = load_labelled(classes=["toxic", "seemingly_toxic", "benign"])
    label_of = dict(zip(labelled["text"], labelled["label_name"], strict=True))
    banned = {normalise(r["text"]) for name in DEFAULT_SETS for r in load_set(name)}  # the held-out sets
    assert [len(texts) for texts in seen] == [10, 10, 10]
    for texts, label in zip(seen, ("toxic", "seemingly_toxic", "benign"), strict=True):
        assert all(label_of[t] == label for t in texts)
        assert not any(in_validation(t, config.val_fraction) for t in texts)
        assert not any(normalise(t) in banned for t in texts)
    assert training_prompts(config) == dict(zip(("toxic", "seemingly_toxic", "benign"), seen, strict=True))


@pytest.mark.parametrize("coefficient", [1.0, 0.4])
def test_weights_change_only_along_the_orthogonal_false_refusal_direction(tmp_path, coefficient):
    config = _config(tmp_path, coefficient=coefficient)
    path = ablate(config)
    found = load_file(tmp_path / "ablate" / "directions.safetensors")
    r, u = found["refusal"].double(), found["false_refusal"].double()
    assert abs(float(r @ u)) < 1e-6 and abs(float(u.norm()) - 1) < 1e-6 and abs(float(r.norm()) - 1) < 1e-6
    before, _ = load_model(config.model, dtype="fp32")
    after, _ = load_model(path, dtype="fp32")
    writers = {f"model.{name}.weight": kind for name, _, kind in residual_writers(before)}
    old, new = before.state_dict(), after.state_dict()
    assert set(old) == set(new)
    for name, w in old.items():
        w, w_new = w.double(), new[name].double()
        if name in writers:
            if writers[name] == "rows":
                expected = w - coefficient * torch.outer(w @ u, u)
            else:
                expected = w - coefficient * torch.outer(u, u @ w)
            torch.testing.assert_close(w_new, expected, rtol=0, atol=1e-6)
        elif name != "lm_head.weight":  # tied to the embeddings in the tiny model, edited with them
            assert torch.equal(w_new, w), name


def test_full_ablation_leaves_the_residual_stream_without_the_direction(tmp_path):
    path = ablate(_config(tmp_path))
    u = load_file(tmp_path / "ablate" / "directions.safetensors")["false_refusal"]
    model, tokenizer = load_model(path, dtype="fp32")
    ids = torch.tensor([tokenizer.encode("how do I kill a python process")])
    hidden = model(ids, output_hidden_states=True).hidden_states
    for h in hidden[:-1]:  # every residual state before the final norm
        assert float((h @ u).abs().max()) < 1e-4 * float(h.norm(dim=-1).max())


def test_cli_runs_and_refuses_bad_settings(tmp_path, capsys):
    argv = ["ablate", "--model", str(tiny_model_dir("llama")), "--layer", "2", "--max-prompts", "6",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 0
    assert "edited model saved to" in capsys.readouterr().out
    assert (tmp_path / "a" / "model" / "dcr.json").is_file()
    assert main([*argv, "--output-dir", str(tmp_path / "b"), "--coefficient", "1.5"]) == 2
    assert "coefficient=1.5" in capsys.readouterr().err
    assert main([*argv, "--output-dir", str(tmp_path / "c"), "--harmless", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_unsupported_layers_and_coinciding_means_are_refused(tmp_path):
    model, _ = load_model(tiny_model_dir("llama"), dtype="fp32")
    model.model.layers[1].post_feedforward_layernorm = torch.nn.Identity()  # a Gemma-2-style layer
    with pytest.raises(ValueError, match="cannot have a direction ablated"):
        residual_writers(model)
    same = torch.ones(8)
    with pytest.raises(ValueError, match="class means coincide"):
        estimate_directions({"toxic": same, "seemingly_toxic": same + 1, "benign": same}, {})
    with pytest.raises(ValueError, match="along the refusal direction"):
        estimate_directions({"toxic": same * 2, "seemingly_toxic": same * 3, "benign": same}, {})
