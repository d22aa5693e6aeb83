"""Run directories: a file where a directory should be is a plain error; a live run keeps a second writer out (a
real second process holds the lock); a stale lock (killed run, reused pid) is taken over; the lock goes on exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from necklace.cli import main
from necklace.detection import rundir
from necklace.detection.rundir import LOCK_NAME, RunDirLocked, RunLock, prepare_output_dir
from necklace.detection.train import TrainConfig, train

#: a second process that takes the lock and keeps it until killed (rundir.py needs only the standard library)
HOLDER = (
    "import importlib.util, sys, time\n"
    "spec = importlib.util.spec_from_file_location('rundir', sys.argv[2])\n"
    "rd = importlib.util.module_from_spec(spec); spec.loader.exec_module(rd)\n"
    "rd.RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)\n"
)


def tiny(output: Path) -> TrainConfig:
    return TrainConfig(
        backbone_options={"width": 4},
        neck_options={"width": 8},
        detector_options={"head_convs": 1},
        data_options={"num_images": 2, "val_images": 2},
        image_size=64,
        batch_size=2,
        steps=1,
        output=str(output),
        tensorboard=False,
    )


def test_an_output_that_is_a_file_is_a_plain_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"output '.*notes\.txt' is a file, not a directory: .*Give a directory"):
        train(tiny(tmp_path / "notes.txt"), progress=False)
    with pytest.raises(ValueError, match=r"cannot be created: '.*notes\.txt' is a file, not a directory"):
        prepare_output_dir(tmp_path / "notes.txt" / "run")
    assert main(["train", "--steps", "1", "--output", str(tmp_path / "notes.txt"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "Errno" not in err and err.count("\n") == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # untouched


@pytest.mark.train
def test_a_live_run_keeps_a_second_writer_out_and_a_killed_one_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), rundir.__file__], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=rf"'{out}' is in use by another run: process {holder.pid} on this"):
            train(tiny(out), progress=False)
        assert main(["train", "--steps", "1", "--output", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "choose another output" in err and err.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused runs wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: its lock stays behind, stale
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    result = train(tiny(out), progress=False)  # the stale lock is taken over
    assert result.completed and not (out / LOCK_NAME).exists()  # and released at the end


def test_stale_and_foreign_locks(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    mine = json.loads((tmp_path / LOCK_NAME).read_text())
    with pytest.raises(RunDirLocked, match="in use by another run: process"):
        RunLock(tmp_path).acquire()  # the same process counts as alive too: one writer per directory
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    # a reused pid: alive, but not the process that wrote the lock (another start time)
    (tmp_path / LOCK_NAME).write_text(json.dumps({**mine, "process_start": -1}))
    with RunLock(tmp_path) as again:
        assert again.holder()["process_start"] == mine["process_start"]
    # a lock from another machine cannot be checked: respected, and the message says which file to delete
    (tmp_path / LOCK_NAME).write_text(json.dumps({**mine, "host": "elsewhere", "pid": os.getpid()}))
    with pytest.raises(RunDirLocked, match=rf"host 'elsewhere'.*delete '{tmp_path / LOCK_NAME}'"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text("")  # a lock cut off while it was written: unreadable, taken over
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
