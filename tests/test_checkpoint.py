"""Checkpoint files: atomic writes (a crash while saving keeps the old checkpoint), clear errors when reading."""

from __future__ import annotations

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
