"""The layer-l representation: the truncated forward equals the full model's hidden state, any padding side."""

from __future__ import annotations

import shutil

import pytest
import torch
from dcr_helpers import prompt_rows, tiny_model_dir

from dcr.modeling.chat import collate, encode_prompts, pad_id
from dcr.modeling.layer_states import decoder_of, pool, represent, resolve_layer, truncated
from dcr.modeling.model import TOKENIZER_FILES, load_model, resolve_model_path


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    """(model, tokenizer); transformers swaps in its Qwen2 tokenizer class for a qwen2 folder, which cannot
    read the tiny word-level vocabulary, so the Llama folder's tokenizer serves both."""
    model, _ = load_model(tiny_model_dir(request.param))
    return model, load_model(tiny_model_dir("llama"))[1]


def _batch(tokenizer, side="right", n=5):
    ids = encode_prompts(tokenizer, [r["text"] for r in prompt_rows()[::9][:n]])
    assert len({len(x) for x in ids}) > 1, "the batch must need padding"
    return collate(ids, pad_id(tokenizer), side)


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_truncated_forward_equals_full_hidden_state(tiny, layer):
    model, tokenizer = tiny
    input_ids, mask = _batch(tokenizer)
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        last = represent(model, input_ids, mask, layer, "last")
        mean = represent(model, input_ids, mask, layer, "mean")
    rows = torch.arange(len(mask))
    torch.testing.assert_close(last, full[rows, mask.sum(1) - 1], rtol=1e-5, atol=1e-5)
    expected_mean = (full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-5)


def test_left_and_right_padding_agree_and_match_unpadded(tiny):
    model, tokenizer = tiny
    right, left = _batch(tokenizer, "right"), _batch(tokenizer, "left")
    with torch.no_grad():
        for pooling in ("last", "mean"):
            a = represent(model, *right, 3, pooling)
            b = represent(model, *left, 3, pooling)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            alone = [
                represent(model, ids[m.bool()][None], m[m.bool()][None], 3, pooling)
                for ids, m in zip(*right, strict=True)
            ]
            torch.testing.assert_close(a, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_layers_above_l_are_not_computed_and_model_is_restored(tiny):
    model, tokenizer = tiny
    decoder = decoder_of(model)
    layers, norm = decoder.layers, decoder.norm
    calls = []
    hooks = [block.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, block in enumerate(layers)]
    norm_hook = norm.register_forward_hook(lambda *_: calls.append("norm"))
    try:
        with torch.no_grad():
            represent(model, *_batch(tokenizer), 2)
        assert calls == [0, 1]
        calls.clear()
        with torch.no_grad():
            represent(model, *_batch(tokenizer), len(layers))
        assert calls == [0, 1, 2, 3, "norm"]
    finally:
        for h in (*hooks, norm_hook):
            h.remove()
    assert decoder.layers is layers and decoder.norm is norm
    with pytest.raises(RuntimeError), truncated(model, 2):
        raise RuntimeError("interrupted")
    assert decoder.layers is layers and decoder.norm is norm


def test_resolve_layer():
    assert resolve_layer(15, 30) == 15
    assert resolve_layer(0.5, 30) == 15
    assert resolve_layer(1.0, 30) == 30
    assert resolve_layer(0.01, 30) == 1
    for bad in (0, 31, -1, 0.0, 1.5, True, "3"):
        with pytest.raises(ValueError):
            resolve_layer(bad, 30)


def test_pool_rejects_unknown_mode():
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")


def test_chat_template_and_truncation(tiny):
    _, tokenizer = tiny
    ids = encode_prompts(tokenizer, ["make bomb at home"], max_length=3)[0]
    assert tokenizer.convert_ids_to_tokens(ids) == ["home", "<|end|>", "<|assistant|>"], "cut from the left"
    raw = encode_prompts(tokenizer, ["make bomb"], chat_template=False)[0]
    assert tokenizer.convert_ids_to_tokens(raw) == ["make", "bomb"]
    tokenizer_without = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(tokenizer_without, ["x"])


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(tmp_path)


def test_model_folder_without_tokenizer_is_named_as_such(tmp_path):
    """A model saved without its tokenizer: one clear error, not a sentencepiece / tiktoken traceback."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_model(folder)
