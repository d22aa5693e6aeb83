"""Checkpoint files: atomic writes (a crash while saving keeps the old checkpoint), plain errors with the path when
writing (full disk, file-size limit) and reading (empty, truncated, a directory)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from necklace.detection import checkpoint as ckpt_mod
from necklace.detection.checkpoint import load_checkpoint, save_checkpoint


def test_a_crash_while_saving_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def half_write(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 truncated")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    old = load_checkpoint(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------------ plain errors
class _FullDisk(io.BufferedWriter):
    """A file on a disk that fills up after ``room`` bytes: later writes fail with ENOSPC, as a real one does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(io.FileIO(path, "wb"))
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def test_a_full_disk_says_no_space_left_with_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(ckpt_mod, "_open_for_write", lambda p: _FullDisk(p, room=4096))
    with pytest.raises(OSError, match=r"^no space left writing .*ckpt\.pt \(\d+ MiB free there\); the previous") as e:
        save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)  # torch's own message: inline_container.cc
    assert e.value.errno == errno.ENOSPC and "inline_container" not in str(e.value) and "Errno" not in str(e.value)
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_real_file_size_limit_is_reported_in_plain_words(tmp_path: Path) -> None:
    """Through torch's real writer: a process limited to 64 KiB files (RLIMIT_FSIZE, no root needed) saves 400 KB."""
    code = (  # the module alone (it needs only torch): a quicker start than importing all of necklace
        "import importlib.util, resource, signal, sys, torch\n"
        "spec = importlib.util.spec_from_file_location('ckpt', sys.argv[2])\n"
        "ckpt = importlib.util.module_from_spec(spec); spec.loader.exec_module(ckpt)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        "    ckpt.save_checkpoint({'w': torch.zeros(100_000)}, sys.argv[1])\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno, e)\n"
    )
    argv = [sys.executable, "-c", code, str(tmp_path / "big.pt"), ckpt_mod.__file__]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"OSError {errno.EFBIG} file too large writing {tmp_path / 'big.pt'}"), run.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, no half checkpoint under the real name


def test_empty_and_truncated_checkpoints_say_so(tmp_path: Path) -> None:
    good = save_checkpoint({"step": 1, "w": torch.ones(1000)}, tmp_path / "good.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint '.*empty\.pt' is empty \(0 bytes\): it was truncated"):
        load_checkpoint(empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut\.pt': the file is truncated or corrupt \(3,000 bytes"):
        load_checkpoint(cut)
    with pytest.raises(FileNotFoundError, match=r"is a directory; give the checkpoint file"):
        load_checkpoint(tmp_path)
