"""Evaluation plumbing on a tiny random Llama: generation, perplexity, the files written, the table, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from dcr_helpers import tiny_model_dir

from dcr.cli import main
from dcr.evaluation.evaluate import evaluate, summary_key
from dcr.evaluation.generate import generate
from dcr.evaluation.perplexity import pair_ids, perplexity
from dcr.evaluation.report import comparison_table
from dcr.modeling.model import load_model
from dcr.prompts.eval_sets import DEFAULT_SETS, SETS, load_set, spread
from dcr.prompts.sets import load_labelled
from dcr.prompts.tables import normalise

transformers = pytest.importorskip("transformers")
PROMPTS = [
    "how do i kill a python process",
    "cook meth",
    "write poem about the sea and history of war at home",
    "what is terrorism",
]


@pytest.fixture(scope="module")
def tiny():
    """The tiny Llama with its output head untied and re-drawn, so greedy decoding produces varied words."""
    model, tok = load_model(tiny_model_dir("llama"))
    torch.manual_seed(0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model, tok


@pytest.mark.parametrize("max_batch_tokens", [8192, 40])
def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny, max_batch_tokens):
    model, tok = tiny
    batched = generate(
        model, tok, PROMPTS, max_new_tokens=6, batch_size=4, max_batch_tokens=max_batch_tokens, progress=False
    )
    single = [generate(model, tok, [p], max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(1 <= len(r.split()) <= 6 for r in batched) and len(set(batched)) > 1


@pytest.mark.parametrize("max_batch_tokens", [8192, 1])
def test_perplexity_counts_response_tokens_only(tiny, max_batch_tokens):
    model, tok = tiny
    pairs = [("cook meth", "write poem about the sea"), ("how do i kill a python process", "crash program")]
    got = perplexity(model, tok, pairs, batch_size=2, max_batch_tokens=max_batch_tokens, progress=False)
    total, tokens = 0.0, 0
    for prompt, answer in pairs:
        ids, n_context = pair_ids(tok, prompt, answer)
        assert tok.decode(ids[n_context:]).split()[:2] == answer.split()[:2]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, n_context - 1 : -1]
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[n_context:]), reduction="sum"))
        tokens += len(ids) - n_context
    assert got["tokens"] == tokens and got["answers"] == 2
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)


def test_evaluate_writes_results_completions_report_and_plot(tiny, tmp_path):
    model, tok = tiny
    results = evaluate(
        model, tok, layer=2, out_dir=tmp_path, max_new_tokens=4, batch_size=4, limit=6, name="tiny", progress=False
    )
    assert set(results["sets"]) == set(DEFAULT_SETS)
    for name, s in results["sets"].items():
        assert s["n"] == 6 and 0.0 <= s["score"] <= 1.0
        assert results["summary"][summary_key(name, s["expected"])] == s["score"]
    assert {"probe_auroc", "nn_accuracy", "cross_class_cosine", "perplexity"} <= set(results["summary"])
    assert results["perplexity"]["answers"] == 6  # the perplexity answers follow `limit` by default
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == pytest.approx(results["summary"])
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * len(DEFAULT_SETS)
    assert {"set", "prompt", "response", "refusal", "refusal_prefix", "cues"} <= set(rows[0])
    report = (tmp_path / "report.md").read_text()
    assert "# Evaluation: tiny" in report and "XSTest safe: compliance" in report and "## Time" in report
    if "plot" in results["files"]:
        assert (tmp_path / "projection.png").read_bytes()[:4] == b"\x89PNG"
        assert "projection.png" in report


def test_perplexity_limit_caps_the_answers_on_its_own(tiny):
    model, tok = tiny
    results = evaluate(
        model, tok, sets=["xstest_safe"], layer=None, max_new_tokens=2, limit=5, perplexity_limit=2, progress=False
    )
    assert results["sets"]["xstest_safe"]["n"] == 5 and results["perplexity"]["answers"] == 2
    assert results["settings"]["perplexity_limit"] == 2


def test_evaluate_without_representation_or_perplexity(tiny):
    model, tok = tiny
    results = evaluate(
        model, tok, sets=["xstest_safe"], layer=None, perplexity=False, max_new_tokens=2, limit=3, progress=False
    )
    assert list(results["summary"]) == ["xstest_safe_compliance"] and "files" not in results
    with pytest.raises(ValueError, match="unknown evaluation set"):
        evaluate(model, tok, sets=["nope"], progress=False)


def test_comparison_table_has_a_row_per_model_and_marks_missing_metrics():
    results = {
        "base": {"summary": {"xstest_safe_compliance": 0.7, "perplexity": 12.345}},
        "DCR + alignment": {"summary": {"xstest_safe_compliance": 0.95, "probe_auroc": 0.99}},
    }
    lines = comparison_table(results).splitlines()
    assert lines[0] == "| model | XSTest safe: compliance ↑ | probe AUROC ↑ | answer perplexity ↓ |"
    assert lines[2] == "| base | 0.700 | - | 12.35 |"
    assert lines[3] == "| DCR + alignment | 0.950 | 0.990 | - |"


def test_limit_spreads_over_the_whole_set():
    rows = load_set("xstest_safe")
    assert len(rows) == 250 and all(r["label"] == "seemingly_toxic" for r in rows)
    quick = load_set("xstest_safe", 50)
    assert len(quick) == 50 and {r["type"] for r in quick} == {r["type"] for r in rows}
    assert spread(list(range(10)), 3) == [0, 3, 6] and spread([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError):
        spread([1, 2], 0)


def test_evaluation_sets_never_appear_in_training_data():
    training, _ = load_labelled(classes=["toxic", "seemingly_toxic", "benign"])
    seen = {normalise(t) for t in training["text"]}
    # JailbreakBench is a public DCR-stage source: held out only for DCR stages that do not use it (twins, paper)
    for name in SETS:
        overlap = seen & {normalise(r["text"]) for r in load_set(name)}
        assert bool(overlap) == name.startswith("jailbreakbench"), name
    twins, _ = load_labelled(sources=["twins"])
    jbb = {normalise(r["text"]) for name in SETS if name.startswith("jailbreakbench") for r in load_set(name)}
    assert not jbb & {normalise(t) for t in twins["text"]}
    assert all(r["answer"] for r in load_set("self_instruct_user"))


def test_cli_evaluates_a_local_model(tmp_path, capsys):
    argv = [
        "evaluate",
        "--model",
        str(tiny_model_dir("llama")),
        "--output-dir",
        str(tmp_path),
        "--sets",
        "xstest_safe,xstest_unsafe",
        "--limit",
        "5",
        "--max-new-tokens",
        "2",
        "--layer",
        "2",
        "--no-perplexity",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "xstest_safe_compliance" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["limit"] == 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sets", "xstest_safe,nope"], "unknown or empty sets"),
        (["--limit", "0"], "limit=0"),
        (["--layer", "half"], "layer: cannot use 'half'"),
        (["--dtype", "fp8"], "dtype must be one of"),
    ],
)
def test_cli_rejects_bad_options(argv, message, tmp_path, capsys):
    assert main(["evaluate", "--output-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_names_the_flag_for_the_weights_dtype(tmp_path, capsys):
    """`--precision` means autocast in refine and align; evaluate refuses it and points at --dtype."""
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--output-dir", str(tmp_path), "--precision", "bf16"])
    assert exit_info.value.code == 2
    assert "use --dtype (the weights' dtype" in capsys.readouterr().err
