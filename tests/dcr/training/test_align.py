"""The alignment stage on a tiny random model: response-only loss, the mix, the retention term, resume, CLI."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from dcr_helpers import tiny_model_dir

from dcr.config import ConfigError
from dcr.prompts.refusals import refusal_for
from dcr.prompts.sft_mix import benign_pairs, build_mix, refusal_prompts
from dcr.prompts.sources import DCR_HH_SOURCE, dcr_hh_prompts, dcr_stage_prompts, evaluation_prompts
from dcr.prompts.tables import DataError, normalise
from dcr.training.align import align, batch_rows, response_labels
from dcr.training.align_config import AlignConfig
from dcr.training.jsonl_log import read_log

transformers = pytest.importorskip("transformers")


@pytest.fixture
def config(tmp_path):
    return AlignConfig(
        model=str(tiny_model_dir("llama")),
        examples=40,
        refusal_share=0.25,
        max_length=32,
        batch_size=6,
        micro_batch_size=4,
        steps=4,
        lr=1e-3,
        save_every=2,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )


def test_labels_cover_answer_tokens_only():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    labels = response_labels(ids, mask, [3, 2])
    assert labels.tolist() == [[-100, -100, -100, 8, 9, -100], [-100, -100, 7, 8, -100, -100]]


def test_loss_scores_answer_tokens_only(config):
    """The loss is the summed next-token NLL of the answer tokens, nothing from the prompt or the padding."""
    from dcr.modeling.model import load_model
    from dcr.training.align import response_loss_sum

    model, _ = load_model(config.model)
    ids = torch.randint(6, 20, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    labels = response_labels(ids, mask, [6, 3])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        loss = response_loss_sum(model, ids, mask, labels)
    # the logit at position t predicts token t + 1: answers start at tokens 6 and 3, row 1 ends at token 7
    assert loss.item() == pytest.approx((nll[0, 5:].sum() + nll[1, 2:7].sum()).item(), rel=1e-5)


def test_mix_has_the_configured_refusal_share():
    mix = build_mix(0.1, examples=200, seed=3)
    kinds = mix["kind"]
    assert len(mix) == 200 and kinds.count("refusal") == 20
    refusals = [r for r in mix if r["kind"] == "refusal"]
    assert all(r["response"] == refusal_for(r["prompt"], 3) for r in refusals)
    assert len({r["response"] for r in refusals}) >= 10, "refusals should vary"
    assert build_mix(0.1, examples=200, seed=3)["prompt"] == mix["prompt"]
    assert build_mix(0.1, examples=200, seed=4)["prompt"] != mix["prompt"]
    full = build_mix(0.05)
    assert abs(full["kind"].count("refusal") / len(full) - 0.05) < 0.002


def test_contrast_share_fixes_the_share_of_answered_seemingly_toxic_pairs():
    contrast = {normalise(r["prompt"]) for r in benign_pairs() if r.get("contrast")}
    assert 400 < len(contrast) < 500

    def share(mix):
        return sum(normalise(p) in contrast for p in mix["prompt"]) / len(mix)

    natural = build_mix(0.25, seed=0)
    assert 0.28 < share(natural) < 0.36  # about a third when unset
    fixed = build_mix(0.25, examples=200, seed=0, contrast_share=0.5)
    assert share(fixed) == 0.5 and fixed["kind"].count("refusal") == 50
    largest = build_mix(0.25, seed=1, contrast_share=0.5)  # every contrast pair the share allows
    assert abs(share(largest) - 0.5) < 0.01 and sum(normalise(p) in contrast for p in largest["prompt"]) <= len(
        contrast
    )
    assert "contrast" not in largest.column_names
    with pytest.raises(DataError, match="contrast_share"):
        build_mix(0.25, contrast_share=0.8)
    with pytest.raises(DataError, match="cannot draw"):
        build_mix(0.25, examples=5000, contrast_share=0.5)


def test_reserved_hh_prompts_leave_the_refusal_pool_only_when_asked():
    reserved = {normalise(t) for t in dcr_hh_prompts()}
    assert len(reserved) == 500 and reserved <= {normalise(t) for t in refusal_prompts()}
    kept = {normalise(t) for t in refusal_prompts([DCR_HH_SOURCE])}
    assert not kept & reserved and len(kept) == len(refusal_prompts()) - 500
    with pytest.raises(DataError, match="reserved source"):
        refusal_prompts(["twins"])


def test_refusal_prompts_are_disjoint_from_dcr_and_evaluation_prompts():
    toxic = {normalise(t) for t in refusal_prompts()}
    assert len(toxic) > 1000
    assert not toxic & dcr_stage_prompts()
    assert not toxic & evaluation_prompts()
    benign = {normalise(p) for p in build_mix(0.05)["prompt"]}
    assert not benign & evaluation_prompts()


def test_batches_are_a_pure_function_of_the_step():
    assert batch_rows(10, 4, 0, 2) == batch_rows(10, 4, 0, 2)
    stream = [i for s in range(5) for i in batch_rows(10, 4, 1, s)]
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(10))


def test_retention_term_sends_gradient_to_layers_up_to_l_only(config, monkeypatch):
    from dcr.modeling.model import load_model
    from dcr.training import align as align_mod

    model, tok = load_model(config.model)
    cfg = AlignConfig(**{**config.__dict__, "retention_weight": 1.0, "retention_layer": 2, "retention_batch_size": 4})
    mix = build_mix(0.25, examples=40, seed=0)
    term = align_mod._Retention(model, tok, mix, 2, cfg, torch.device("cpu"))
    stats = term.backward(0)
    assert stats["retention_loss"] > 0
    layers = model.model.layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[0].parameters())
    assert all(p.grad is None for blk in layers[2:] for p in blk.parameters())


def test_align_trains_saves_and_resumes_identically(config, tmp_path):
    path = align(config)
    assert (path / "model.safetensors").is_file() and (path / "dcr.json").is_file()
    full = read_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in full] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in full)

    again = tmp_path / "again"
    shutil.copytree(tmp_path / "run" / "checkpoints", again / "checkpoints")
    shutil.rmtree(again / "checkpoints" / "step-00000004")
    cut = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[:2]]
    (again / "metrics.jsonl").write_text("\n".join(cut) + "\n")
    resumed = AlignConfig(**{**config.__dict__, "output_dir": str(again), "resume": True})
    align(resumed)
    log = read_log(again / "metrics.jsonl")
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full], rel=1e-5)

    with pytest.raises(ConfigError, match="already holds a run"):
        align(config)


def test_align_with_retention_and_lora_runs(config):
    pytest.importorskip("peft")
    cfg = AlignConfig(
        **{
            **config.__dict__,
            "retention_weight": 0.5,
            "retention_batch_size": 4,
            "lora": True,
            "save_every": 0,
            "steps": 2,
        }
    )
    path = align(cfg)
    log = read_log(path.parent / "metrics.jsonl")
    assert all("retention_loss" in r for r in log)


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError, match="refusal_share"):
        AlignConfig(refusal_share=1.0).validate()
    with pytest.raises(ConfigError, match="needs refusal pairs"):
        AlignConfig(refusal_share=0.0, retention_weight=1.0).validate()


def test_cli_help_documents_every_option(capsys):
    import dataclasses

    from dcr.cli import main

    with pytest.raises(SystemExit):
        main(["align", "--help"])
    text = capsys.readouterr().out
    assert all("--" + f.name.replace("_", "-") in text for f in dataclasses.fields(AlignConfig))
