"""Layers are plain PyTorch (#19): a built neck computes what torch's own modules compute, in any mode; nothing is
compiled, loaded or written at import or in a forward; forward hooks fire on every module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import necklace
from necklace import FeatureSpec

SPECS = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))


@pytest.mark.parametrize("name", ["fpn", "yolo_pafpn", "rep_pafpn", "yolo11_pafpn"])
def test_every_conv_is_torchs_own(name: str) -> None:
    neck = necklace.build_neck(name, SPECS, **({"width": 64} if name == "fpn" else {}))
    for m in (neck, necklace.deploy(neck.eval())):
        convs = {type(c) for c in m.modules() if isinstance(c, nn.Conv2d | nn.ConvTranspose2d)}
        assert convs <= {nn.Conv2d, nn.ConvTranspose2d}, convs


@pytest.mark.parametrize("name", ["fpn", "yolo_pafpn"])
@pytest.mark.parametrize("grad", [False, True])
def test_forward_hooks_fire_on_every_module_in_any_mode(name: str, grad: bool) -> None:
    neck = necklace.build_neck(name, SPECS, **({"width": 64} if name == "fpn" else {})).eval()
    fired: set[str] = set()
    modules = {n: m for n, m in neck.named_modules() if n}
    for n, m in modules.items():
        m.register_forward_hook(lambda mod, i, o, tag=n: fired.add(tag))
    feats = [torch.randn(1, s.channels, 128 // s.stride, 96 // s.stride) for s in SPECS]
    with torch.set_grad_enabled(grad):
        neck(feats)
    # every module that computes something is called (containers such as ModuleList / ModuleDict are not)
    called = {n for n, m in modules.items() if not isinstance(m, nn.ModuleList | nn.ModuleDict)}
    missing = sorted(called - fired)
    assert not missing, missing[:10]
    if name == "yolo_pafpn":
        assert any(n.endswith("block.cv1") for n in fired)  # C2f's head, under no_grad too


def test_import_and_forward_compile_load_and_write_nothing(tmp_path: Path) -> None:
    code = (
        "import torch, necklace\n"
        "from necklace.deploy.native import loader\n"
        "neck = necklace.build_neck('yolo_pafpn', [(64, 8), (128, 16), (256, 32)]).eval()\n"
        "feats = [torch.randn(1, c, 640 // s, 640 // s) for c, s in ((64, 8), (128, 16), (256, 32))]\n"
        "with torch.no_grad():\n"
        "    neck(feats)\n"
        "print(loader.library() is None, loader.status().loaded)\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env.pop("NECKLACE_NATIVE_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
    assert [p for p in home.rglob("*") if "necklace" in str(p)] == []  # no cache folder, no library
