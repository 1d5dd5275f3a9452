"""The quick profile's bf16 settings on a CPU without bf16 instructions: fp32 instead, unless the user asked for
bf16 themselves, and said in the log."""

from __future__ import annotations

import pytest

from dcr.modeling import runtime
from dcr.pipeline.profiles import PROFILES
from dcr.pipeline.run import resolve

PRECISIONS = {"refine": "precision", "align": "precision", "evaluate": "dtype"}


def _precisions(settings):
    return {section: settings[section].get(key) for section, key in PRECISIONS.items()}


def test_the_quick_profile_runs_in_bf16_with_eager_attention_where_the_cpu_has_bf16():
    messages: list[str] = []
    settings = resolve("quick", device="cpu", log=messages.append)
    assert _precisions(settings) == {"refine": "bf16", "align": "bf16", "evaluate": "bf16"}
    assert settings["refine"]["attention"] == settings["align"]["attention"] == "eager"
    assert messages == []


def test_a_cpu_without_bf16_runs_the_quick_profile_in_fp32_and_says_so(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    messages: list[str] = []
    settings = resolve("quick", device="cpu", log=messages.append)
    assert _precisions(settings) == {"refine": "fp32", "align": "fp32", "evaluate": "fp32"}
    assert settings["refine"]["attention"] == settings["align"]["attention"] == "auto"
    assert len(messages) == 1 and "no bf16 instructions" in messages[0]
    for changed in ("refine.precision", "refine.attention", "align.precision", "align.attention", "evaluate.dtype"):
        assert changed in messages[0]
    # every other setting is the profile's
    quick = PROFILES["quick"]
    for section in ("refine", "align", "evaluate"):
        kept = {k: v for k, v in settings[section].items() if k not in ("precision", "attention", "dtype")}
        assert kept == {k: v for k, v in quick[section].items() if k not in ("precision", "attention", "dtype")}


def test_bf16_the_user_asked_for_is_kept_on_any_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    overrides = {"align": {"precision": "bf16", "attention": "eager"}, "evaluate": {"dtype": "bf16"}}
    messages: list[str] = []
    settings = resolve("quick", overrides, device="cpu", log=messages.append)
    assert _precisions(settings) == {"refine": "fp32", "align": "bf16", "evaluate": "bf16"}
    assert settings["align"]["attention"] == "eager" and settings["refine"]["attention"] == "auto"
    assert messages == [messages[0]] and "align" not in messages[0] and "evaluate" not in messages[0]


@pytest.mark.parametrize("name", ["paper", "full"])
def test_profiles_without_bf16_settings_are_left_alone(name, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    messages: list[str] = []
    assert resolve(name, device="cpu", log=messages.append) == PROFILES[name]
    assert messages == []
