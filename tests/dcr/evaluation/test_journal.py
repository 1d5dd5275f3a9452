"""`dcr evaluate` keeps responses as they are generated: a late failure or a kill loses none, a rerun generates
only the rest and ends with the completions of an uninterrupted run; a journal of other settings is not used."""

from __future__ import annotations

import json

import pytest
from dcr_helpers import tiny_model_dir

from dcr.config import from_mapping
from dcr.evaluation import evaluate as evaluate_module
from dcr.evaluation.config import EvaluateConfig
from dcr.evaluation.evaluate import evaluate_model
from dcr.evaluation.journal import PATTERN, GenerationJournal

SETS = "xstest_safe,xstest_unsafe"
PROMPTS = 8  # 4 per set


def _config(out, **overrides) -> EvaluateConfig:
    values = {
        "model": str(tiny_model_dir("llama")),
        "output_dir": str(out),
        "sets": SETS.split(","),
        "limit": 4,
        "max_new_tokens": 3,
        "batch_size": 2,
        "representation": False,
        "perplexity": False,
        "progress": False,
        "device": "cpu",
    }
    return from_mapping(EvaluateConfig, {**values, **overrides})


def _completions(out) -> list[dict]:
    return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]


@pytest.fixture
def counted(monkeypatch):
    """Counts the prompts sent to generation; `fail_after` batches raise KeyboardInterrupt (a kill)."""
    state = {"prompts": 0, "batches": 0, "fail_after": None}
    real = evaluate_module.generate

    def generate(model, tokenizer, prompts, on_batch=None, **kw):
        state["prompts"] += len(prompts)

        def batch(rows, outs):
            on_batch(rows, outs)
            state["batches"] += 1
            if state["fail_after"] is not None and state["batches"] >= state["fail_after"]:
                raise KeyboardInterrupt

        return real(model, tokenizer, prompts, on_batch=batch, **kw)

    monkeypatch.setattr(evaluate_module, "generate", generate)
    return state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    evaluate_model(_config(out))
    return _completions(out)


def test_a_killed_evaluation_continues_where_it_stopped(tmp_path, counted, uninterrupted):
    counted["fail_after"] = 3  # killed after 3 batches of 2: the first set and half of the second
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(_config(tmp_path))
    assert not (tmp_path / "completions.jsonl").exists()
    assert len((tmp_path / "generated.rank0.jsonl").read_text().splitlines()) == 1 + 6  # header + responses
    counted.update(prompts=0, fail_after=None)
    evaluate_model(_config(tmp_path))
    assert counted["prompts"] == PROMPTS - 6
    assert _completions(tmp_path) == uninterrupted
    assert not list(tmp_path.glob(PATTERN))  # results written: the journal is gone


def test_a_failure_while_writing_keeps_every_response(tmp_path, counted, monkeypatch, uninterrupted):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(evaluate_module, "write_results", disk_full)
        with pytest.raises(OSError, match="No space"):
            evaluate_model(_config(tmp_path))
    counted["prompts"] = 0
    evaluate_model(_config(tmp_path))
    assert counted["prompts"] == 0
    assert _completions(tmp_path) == uninterrupted


def test_other_settings_regenerate_everything(tmp_path, counted):
    counted["fail_after"] = 2
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(_config(tmp_path))
    counted.update(prompts=0, fail_after=None)
    evaluate_model(_config(tmp_path, max_new_tokens=2))
    assert counted["prompts"] == PROMPTS
    assert all(len(row["response"].split()) <= 2 for row in _completions(tmp_path))


def test_a_torn_last_line_is_ignored_and_the_journal_goes_on(tmp_path):
    prompts = [{"id": f"p{i}", "text": f"prompt {i}"} for i in range(3)]
    journal = GenerationJournal(tmp_path, {"model": "m"})
    journal.record("set", prompts[:2], ["a", "b"])
    journal.close()
    with (tmp_path / "generated.rank0.jsonl").open("a") as f:
        f.write('{"set": "set", "id": "p2", "te')  # a kill in the middle of a line
    again = GenerationJournal(tmp_path, {"model": "m"})
    assert again.known("set", prompts) == {0: "a", 1: "b"}
    again.record("set", prompts[2:], ["c"])
    again.close()
    assert GenerationJournal(tmp_path, {"model": "m"}).known("set", prompts) == {0: "a", 1: "b", 2: "c"}
    assert GenerationJournal(tmp_path, {"model": "other"}).known("set", prompts) == {}
