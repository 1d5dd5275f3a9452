"""Launch configs: keyed by size buckets, tuned once and cached on disk for other processes, fixed in
deterministic mode (with column splits that do not depend on the GPU), and bit-identical across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dcr_kernels import tune
from dcr_kernels.backends.triton import launch, tuning


def test_key_buckets_sizes_and_separates_what_changes_the_best_config():
    key = lambda rows, cols=4096, dim=768, **kw: tuning.tuning_key(  # noqa: E731
        "similarity_stats_kernel", rows, cols, dim, kw.get("dtype", torch.bfloat16), "tf32", kw.get("loss", 0), False
    )
    assert key(1000) == key(1024) == key(513)
    assert key(1000) != key(1025) and key(1000) != key(65536)
    assert key(1000, cols=100) == key(1000, cols=128) != key(1000, cols=129)
    assert key(1000, dim=700) == key(1000, dim=704) != key(1000, dim=705)
    assert key(1000) != key(1000, loss=1) and key(1000) != key(1000, dtype=torch.float16)
    assert "M1024-N4096-D768" in key(1000)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dcr_kernels.backends.triton import tuning

    timed = []
    def seconds(index):
        timed.append(index)
        return [3.0, 1.0, 2.0][index]

    chosen = tuning.choose(sys.argv[1], 3, "Fake GPU 80GB", seconds)
    print(json.dumps({"chosen": chosen, "timed": timed}))
    """
)


def _choose_in_a_process(key: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, key], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_second_process_reads_the_choice_instead_of_tuning(tmp_path, monkeypatch):
    env = {**os.environ, "DCR_CACHE": str(tmp_path), "DCR_DETERMINISTIC": "0"}
    env.pop("DCR_TRITON_AUTOTUNE", None)
    first = _choose_in_a_process("k/a", env)
    assert first == {"chosen": 1, "timed": [0, 1, 2]}
    assert _choose_in_a_process("k/a", env) == {"chosen": 1, "timed": []}
    assert _choose_in_a_process("k/b", env)["timed"] == [0, 1, 2]  # another bucket tunes
    (cache,) = (tmp_path / "tuning").glob("*.json")
    assert "Fake_GPU_80GB" in cache.name and "triton" in cache.name
    assert json.loads(cache.read_text())["choices"] == {"k/a": 1, "k/b": 1}  # both processes' choices kept


def test_a_damaged_cache_is_tuned_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DCR_CACHE", str(tmp_path))
    monkeypatch.delenv("DCR_TRITON_AUTOTUNE", raising=False)
    path = tuning.cache_file("Fake GPU")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    monkeypatch.setattr(tuning, "_CACHES", {})
    assert tuning.choose("k", 2, "Fake GPU", [2.0, 1.0].__getitem__) == 1
    assert json.loads(path.read_text())["choices"] == {"k": 1}


@pytest.mark.parametrize("how", ["torch", "env"])
def test_deterministic_mode_runs_the_first_config_without_timing(tmp_path, monkeypatch, how):
    monkeypatch.setenv("DCR_CACHE", str(tmp_path))
    monkeypatch.delenv("DCR_TRITON_AUTOTUNE", raising=False)
    if how == "env":
        monkeypatch.setenv("DCR_DETERMINISTIC", "1")
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(how == "torch")
    try:
        assert tuning.deterministic()
        assert tuning.choose("k", 3, "Fake GPU", lambda i: pytest.fail("timed in deterministic mode")) == 0
    finally:
        torch.use_deterministic_algorithms(saved)


def test_deterministic_column_splits_do_not_depend_on_the_gpu(monkeypatch):
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    shapes = [(64, 100_000), (1000, 65536), (65536, 65536)]

    def splits(sms: int) -> list[int]:
        monkeypatch.setattr(launch, "sm_count", lambda device: sms)
        return [launch.column_splits(m, n, torch.device("cpu")) for m, n in shapes]

    monkeypatch.delenv("DCR_DETERMINISTIC", raising=False)
    assert splits(20) != splits(200)  # a GPU's size sets the splits when tuned for speed
    monkeypatch.setenv("DCR_DETERMINISTIC", "1")
    assert splits(20) == splits(200) == splits(launch.DETERMINISTIC_SMS)


RUN = textwrap.dedent(
    """
    import hashlib, sys, torch
    import dcr_kernels as dk

    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(70, 40, generator=gen).requires_grad_()
    labels = torch.randint(0, 5, (70,), generator=gen)
    loss = (
        dk.circle_loss(x, labels, backend="triton")
        + dk.supcon_loss(x, labels, backend="triton")
        + dk.info_nce(x[:30], x[30:], backend="triton")
    )
    loss.backward()
    digest = hashlib.sha256(loss.detach().numpy().tobytes() + x.grad.numpy().tobytes()).hexdigest()
    print(digest)
    """
)


def test_deterministic_results_are_bit_identical_across_processes():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    runs = [subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout.strip() == runs[1].stdout.strip() and len(runs[0].stdout.strip()) == 64


def test_tune_refuses_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--batch", "1024", "--dim", "768"])
    assert exit_info.value.code == 2
    assert "CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage", ['{"version": 1, "choices": {"k": "abc"}}', '{"version": 1, "choices": ["k"]}',
               '{"version": 1, "choices": {"k": null}}', '{"version": 1, "choices": {"k": -1}}', "[1, 2]"],
)  # fmt: skip
def test_damaged_entries_are_ignored(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("DCR_CACHE", str(tmp_path))
    monkeypatch.delenv("DCR_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setattr(tuning, "_CACHES", {})
    path = tuning.cache_file("Fake GPU")
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    assert tuning.choose("k", 2, "Fake GPU", [2.0, 1.0].__getitem__) == 1
    assert json.loads(path.read_text())["choices"] == {"k": 1}
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_choice_written_by_another_process_meanwhile_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DCR_CACHE", str(tmp_path))
    monkeypatch.delenv("DCR_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setattr(tuning, "_CACHES", {})
    assert tuning.choose("first", 2, "Fake GPU", [2.0, 1.0].__getitem__) == 1  # this process loaded the file
    other = tuning.TuningCache(tuning.cache_file("Fake GPU"))
    other.put("second", 0)  # another process tunes another key
    assert tuning.choose("second", 2, "Fake GPU", lambda i: pytest.fail("timed again")) == 0
