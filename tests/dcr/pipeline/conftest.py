"""The pipeline's tests run the profiles as a CPU with bf16 instructions does, whatever this CPU has (on one
without, the profile's bf16 settings become fp32 ones: tests/dcr/pipeline/test_profiles.py)."""

from __future__ import annotations

import pytest

from dcr.modeling import runtime


@pytest.fixture(autouse=True)
def _cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
