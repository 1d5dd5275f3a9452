"""A run folder has one owner: a second process is refused at once, naming the owner; a lock left by a killed
process is taken over with a warning; the lock goes when the run ends; a process group claims it once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from dcr.config import ConfigError
from dcr.run_lock import LOCK_NAME, FolderLock, claim

HOLD = textwrap.dedent(
    """
    import sys, time
    from dcr.run_lock import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


CLI = "import sys; from dcr.cli import main; sys.exit(main(sys.argv[1:]))"


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_naming_the_owner(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=f"in use by pid {holder.pid}"):
            FolderLock(tmp_path / "run").acquire()
        # a real second `dcr refine` (resuming or not) is refused before it loads anything
        for extra in ([], ["--resume"]):
            done = subprocess.run(
                [sys.executable, "-c", CLI, "refine", "--output-dir", str(tmp_path / "run"), "--no-progress", *extra],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 2 and f"in use by pid {holder.pid}" in done.stderr, done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = _holder(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == holder.pid
    with pytest.warns(RuntimeWarning, match="no longer running"):
        lock = FolderLock(tmp_path / "run").acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_released_when_the_run_ends_even_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path / "run").acquire():
            raise RuntimeError("the run failed")
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with FolderLock(tmp_path / "run").acquire():  # free again
        pass


def test_process_group_claims_once_through_rank_zero(tmp_path):
    other_rank = SimpleNamespace(main=False, sum=lambda value: value)
    claim(tmp_path / "run", other_rank)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with claim(tmp_path / "run", SimpleNamespace(main=True, sum=lambda value: value)):
        assert (tmp_path / "run" / LOCK_NAME).exists()
    refused_elsewhere = SimpleNamespace(main=False, sum=lambda value: value + 1.0)  # rank 0 was refused
    with pytest.raises(ConfigError, match="rank 0 could not claim"):
        claim(tmp_path / "run", refused_elsewhere)


@pytest.mark.parametrize("command", ["refine", "evaluate"])
def test_unwritable_output_folder_fails_before_the_model_loads(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = [sys.executable, "-c", CLI, command, "--output-dir", str(blocker / "out"), "--model", str(tmp_path / "none")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cannot create the output folder" in done.stderr, done.stderr
