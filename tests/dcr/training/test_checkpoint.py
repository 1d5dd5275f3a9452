"""Checkpoints that verify on resume: a damaged newest checkpoint (each of its files truncated in turn) is
reported and the previous intact one is used, giving the uninterrupted run's weights; none intact is a
one-line error naming them; leftovers of killed writes are removed; a write that fails (full disk,
read-only folder) is one line naming the folder and leaves the previous checkpoints as they were."""

from __future__ import annotations

import errno
import shutil

import pytest
import torch
from dcr_helpers import tiny_refine_config
from safetensors.torch import load_file

from dcr.config import ConfigError
from dcr.training import checkpoint
from dcr.training.refine import refine


@pytest.fixture
def config(tmp_path):
    return tiny_refine_config(tmp_path, val_fraction=0.0)


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def finished(config, tmp_path):
    """A finished run with checkpoints at steps 2 and 4, and its final weights."""
    full = _weights(refine(config))
    shutil.rmtree(tmp_path / "run" / "model")
    return tmp_path / "run" / "checkpoints", full


@pytest.mark.parametrize("name", ["trainable.safetensors", "training.pt", "state.json"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(config, finished, name):
    root, full = finished
    _truncate(root / "step-00000004" / name)
    config.resume = True
    with pytest.warns(RuntimeWarning, match=f"step-00000004 .*{name.split('.')[0]}"):
        resumed = _weights(refine(config))
    for key, tensor in full.items():
        assert torch.equal(resumed[key], tensor), key


def test_no_intact_checkpoint_is_one_line_naming_them(config, finished):
    root, _ = finished
    _truncate(root / "step-00000004" / "trainable.safetensors")
    _truncate(root / "step-00000002" / "training.pt")
    config.resume = True
    with pytest.raises(ConfigError, match="no intact checkpoint") as caught:
        refine(config)
    message = str(caught.value)
    assert "\n" not in message and "step-00000004" in message and "step-00000002" in message


def test_leftovers_of_killed_writes_are_removed(config, finished):
    root, _ = finished
    leftover = root / ".tmp-step-00000006-killed"
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"partial")
    config.resume = True
    refine(config)
    assert not leftover.exists()


@pytest.mark.parametrize(
    "target,error",
    [
        ("save_file", OSError(errno.ENOSPC, "No space left on device")),
        ("torch_save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0\nmore")),
    ],
)
def test_failed_write_is_one_line_and_keeps_the_previous_checkpoint(config, tmp_path, monkeypatch, target, error):
    calls = {"n": 0}
    real = checkpoint.save_file if target == "save_file" else torch.save

    def fail_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(*args, **kwargs)

    if target == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", fail_second)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", fail_second)
    with pytest.raises(checkpoint.CheckpointWriteError) as caught:
        refine(config)
    message = str(caught.value)
    assert "\n" not in message and "step-00000004" in message and "previous checkpoints are kept" in message
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000002"]
    assert checkpoint.damage(root / "step-00000002") is None
    assert not [p for p in root.iterdir() if p.name.startswith(checkpoint.TEMPORARY)]


def test_unwritable_folder_is_one_line(tmp_path):
    """A folder that cannot be created (here under a file; permissions do not stop root) fails in one line."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(checkpoint.CheckpointWriteError, match="cannot write checkpoint .*step-00000001") as caught:
        checkpoint.save_checkpoint(blocker / "checkpoints", 1, model, optimizer, scheduler, {})
    assert "\n" not in str(caught.value)
