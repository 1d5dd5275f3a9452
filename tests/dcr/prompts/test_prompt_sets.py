"""Prompt data of the DCR stage: shipped sets, user files, cleaning, split, clear errors, balanced sampler."""

from __future__ import annotations

import json
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")

from dcr_helpers import prompt_rows, write_jsonl  # noqa: E402

from dcr import DATA_DIR  # noqa: E402
from dcr.prompts.sampler import BalancedBatchSampler  # noqa: E402
from dcr.prompts.sets import load_labelled, load_xstest, split  # noqa: E402
from dcr.prompts.sources import PAPER_SOURCES, TRAIN_SOURCES  # noqa: E402
from dcr.prompts.tables import DataError, normalise  # noqa: E402


def test_shipped_sets_carry_attribution_and_load():
    for name in (*TRAIN_SOURCES, "xstest"):
        assert (DATA_DIR / name / "SOURCE.md").is_file()
        assert (DATA_DIR / name / "prompts.jsonl").is_file()
    ds, classes = load_labelled()
    assert classes == ["seemingly_toxic", "toxic"]
    counts = Counter(ds["label_name"])
    assert counts["toxic"] > 1000 and counts["seemingly_toxic"] > 500
    assert [classes[i] for i in ds["label"]] == ds["label_name"]
    keys = [normalise(t) for t in ds["text"]]
    assert len(keys) == len(set(keys)), "prompts are deduplicated"


def test_xstest_never_enters_training():
    xstest = load_xstest()
    assert Counter(xstest["label"]) == {"seemingly_toxic": 250, "toxic": 200}
    train_keys = {normalise(t) for t in load_labelled(classes=["seemingly_toxic", "toxic", "benign"])[0]["text"]}
    assert not train_keys & {normalise(t) for t in xstest["text"]}


def test_benign_class_is_optional():
    ds, classes = load_labelled(classes=["seemingly_toxic", "toxic", "benign"])
    assert classes[2] == "benign" and Counter(ds["label_name"])["benign"] > 100
    assert set(load_labelled(sources=["advbench", "coconot"])[0]["source"]) == {"advbench", "coconot"}


def test_split_is_deterministic_disjoint_and_order_free():
    ds, _ = load_labelled()
    a, b = split(ds, 0.1), split(ds.shuffle(seed=3), 0.1)
    assert sorted(a["validation"]["text"]) == sorted(b["validation"]["text"])
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])
    assert 0.05 < len(a["validation"]) / len(ds) < 0.15


def test_user_files_and_datasets(tmp_path):
    rows = prompt_rows(6)
    rows += [rows[0], {"text": rows[1]["text"].upper(), "label": rows[1]["label"]}]  # duplicates
    rows += [{"text": rows[2]["text"], "label": "seemingly_toxic"}]  # conflicting label: dropped
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    ds, classes = load_labelled(jsonl)
    assert classes == ["seemingly_toxic", "toxic"] and len(ds) == 11
    csv = tmp_path / "p.csv"
    datasets.Dataset.from_list([{"prompt": r["text"], "y": int(r["label"] == "toxic")} for r in rows]).to_csv(csv)
    ds, classes = load_labelled(csv, text_column="prompt", label_column="y")
    assert classes == ["0", "1"] and len(ds) == 11
    ds, classes = load_labelled(datasets.Dataset.from_list(rows), classes=["toxic", "seemingly_toxic"])
    assert classes == ["toxic", "seemingly_toxic"] and ds["label"][0] == 0


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("", {}, "is empty"),
        ('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "x"}\n', {}, "at least two classes"),
        ('{"prompt": "a b", "label": "x"}\n', {}, "no column"),
        ('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n', {}, "two prompts each"),
        ('{"text": "a b", "label": "x"}\n', {"classes": ["x", "x"]}, "duplicates"),
    ],
)
def test_bad_data_gives_clear_errors(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_labelled(path, **kwargs)


def test_bad_paths_and_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_labelled(tmp_path / "missing.csv")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        load_labelled(tmp_path / "p.txt")
    with pytest.raises(DataError, match="unknown shipped source"):
        load_labelled(sources=["nope"])


def test_sampler_balances_every_batch_and_resumes():
    labels = [0] * 5 + [1] * 11 + [2] * 3
    sampler = BalancedBatchSampler(labels, 6, seed=1)
    batches = [next(iter(sampler)) for _ in range(12)]
    for b in batches:
        assert Counter(labels[i] for i in b) == {0: 2, 1: 2, 2: 2}
    seen_of_0 = [i for b in batches[:5] for i in b if labels[i] == 0]
    assert sorted(seen_of_0) == sorted(list(range(5)) * 2), "each epoch of a class visits every row once"
    resumed = BalancedBatchSampler(labels, 6, seed=1, start_step=7)
    assert next(iter(resumed)) == batches[7]
    other = BalancedBatchSampler(labels, 6, seed=2)
    assert [other.batch(t) for t in range(3)] != batches[:3]


def test_sampler_rejects_unbalanceable_batches():
    with pytest.raises(ValueError, match="multiple of the number of classes"):
        BalancedBatchSampler([0, 0, 1, 1], 5)
    with pytest.raises(ValueError, match="at least two classes"):
        BalancedBatchSampler([0, 0, 0], 4)


FUNCTION_WORDS = {"how", "do", "i", "what", "is", "the", "a", "an", "to", "my", "can", "why", "should", "in", "of"}


def test_twins_are_matched_reproducible_and_not_xstest_look_alikes():
    from dcr.prompts import twins

    xstest = list(load_xstest()["text"])
    rows = twins.rows(xstest)
    shipped = [json.loads(line) for line in (DATA_DIR / "twins" / "prompts.jsonl").open()]
    assert shipped == rows, "dcr/data/twins/prompts.jsonl is stale: run python scripts/build_twins.py"
    reference = [twins._words(t) for t in xstest]
    assert not any(twins.near_duplicate(r["text"], reference) for r in rows)
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["label"] == "seemingly_toxic":
            twin = by_id.get(r["id"].replace("seemingly_toxic", "toxic"))
            if twin is not None:  # a toxic twin already shipped under an earlier pair is deduplicated
                assert twin["family"] == r["family"]
                shared = twins._words(r["text"]) & twins._words(twin["text"]) - FUNCTION_WORDS
                assert shared, ("no trigger word shared", r["text"], twin["text"])
    counts = Counter((r["family"], r["label"]) for r in rows)
    assert {f for f, _ in counts} == set(twins.families())
    assert all(counts[(f, "toxic")] > 0 and counts[(f, "seemingly_toxic")] > 0 for f in twins.families())
    ds, _ = load_labelled(sources=["twins"])
    assert len(ds) == len(rows) and "twins" not in load_labelled()[0]["source"]


def test_paper_sources_bring_xstest_safe_into_training_only_when_named():
    rows = load_xstest()
    xstest = {normalise(t) for t in rows["text"]}
    xstest_safe = {normalise(t) for t, n in zip(rows["text"], rows["label"], strict=True) if n == "seemingly_toxic"}
    paper, classes = load_labelled(sources=list(PAPER_SOURCES))
    names = paper["label_name"]
    assert names.count("seemingly_toxic") == 250 and names.count("toxic") == 500
    safe = {normalise(t) for t, n in zip(paper["text"], names, strict=True) if n == "seemingly_toxic"}
    assert safe == xstest_safe and classes == ["seemingly_toxic", "toxic"]
    hh_only, _ = load_labelled(sources=["hh_rlhf_harmful", "jailbreakbench"])
    assert not {normalise(t) for t in hh_only["text"]} & xstest
