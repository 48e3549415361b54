"""One run per run directory: a second holder is refused naming the first; a killed holder's
lock is taken over; ranks started by a launcher do not take it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qtune.runs.lock import LOCK_NAME, RunDirectoryLock


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with RunDirectoryLock(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match=rf"is in use by another run \(.*\"pid\": {os.getpid()}"):
            RunDirectoryLock(tmp_path / "run").__enter__()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released and gone
    with RunDirectoryLock(tmp_path / "run"):  # free again
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import sys, time; from qtune.runs.lock import RunDirectoryLock; "
        f"RunDirectoryLock({str(tmp_path / 'run')!r}).__enter__(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f'"pid": {holder.pid}'):
            RunDirectoryLock(tmp_path / "run").__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # left behind by the killed holder
    with RunDirectoryLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_ranks_started_by_a_launcher_share_the_holders_run(tmp_path, monkeypatch):
    with RunDirectoryLock(tmp_path / "run"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with RunDirectoryLock(tmp_path / "run"):  # a second rank: no lock taken, no error
            time.sleep(0)
