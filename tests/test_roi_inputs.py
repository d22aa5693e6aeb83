"""RoI poolers check every input before torchvision's ``roi_align`` runs: it crashes the process (segmentation fault)
on non-finite boxes, reads past the batch on a bad batch index, and runs for minutes on huge boxes with adaptive
sampling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import necklace
from necklace import FeatureSpec
from necklace.roi import AdaptiveFeaturePooling, MultiLevelRoIPool, SoftRoISelection, assign_levels

STRIDES = [4, 8, 16, 32]
C = 8


def _feats(batch: int = 2) -> list[Tensor]:
    return [torch.randn(batch, C, 64 // s, 64 // s) for s in STRIDES]


def _poolers() -> list[torch.nn.Module]:
    specs = [FeatureSpec(C, s) for s in STRIDES]
    return [MultiLevelRoIPool(STRIDES), AdaptiveFeaturePooling(specs, hidden=16), SoftRoISelection(specs)]


POOLERS = ["MultiLevelRoIPool", "AdaptiveFeaturePooling", "SoftRoISelection"]


def test_non_finite_boxes_never_crash_the_process() -> None:
    # in a child process: before the fix this was a segmentation fault inside roi_align
    code = textwrap.dedent(
        """
        import torch
        from necklace import FeatureSpec
        from necklace.roi import AdaptiveFeaturePooling, MultiLevelRoIPool, SoftRoISelection
        specs = [FeatureSpec(8, s) for s in (4, 8, 16, 32)]
        feats = [torch.randn(1, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
        for pool in (MultiLevelRoIPool([4, 8, 16, 32]), AdaptiveFeaturePooling(specs, hidden=16),
                     SoftRoISelection(specs)):
            for bad in (float("nan"), float("inf"), -float("inf")):
                try:
                    pool(feats, [torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, bad, 20.0]])])
                    print("no error")
                except ValueError as e:
                    print(str(e).split(":")[0], "ValueError")
        """
    )
    env = {"PYTHONPATH": str(Path(necklace.__file__).parents[1]), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == [f"{p} ValueError" for p in POOLERS for _ in range(3)]


@pytest.mark.parametrize("index", range(3))
def test_non_finite_box_is_named(index: int) -> None:
    pool = _poolers()[index]
    boxes = [torch.tensor([[0, 0, 20, 20.0]]), torch.tensor([[0, 0, 8, 8.0], [1, 2, float("nan"), 9]])]
    with pytest.raises(ValueError, match=r"boxes\[1\]\[1\] = \[1\.0, 2\.0, nan, 9\.0\] is not finite.*isfinite"):
        pool(_feats(), boxes)


def test_assign_levels_alone_maps_nan_to_the_lowest_level() -> None:
    # the documented behaviour of the pure level rule is kept; only pooling refuses such boxes
    assert assign_levels(torch.tensor([[0, 0, float("nan"), 20.0]])).tolist() == [2]


def test_batch_index_rows_are_checked() -> None:
    pool = MultiLevelRoIPool(STRIDES)
    with pytest.raises(ValueError, match=r"boxes\[1\] has batch index 2\.0, but the feature maps hold a batch of 2"):
        pool(_feats(), torch.tensor([[0, 0, 0, 9, 9.0], [2, 0, 0, 9, 9.0]]))
    with pytest.raises(ValueError, match=r"has batch index 0\.5"):
        pool(_feats(), torch.tensor([[0.5, 0, 0, 9, 9.0]]))
    with pytest.raises(ValueError, match=r"boxes\[0\] = \[0\.0, 0\.0, 0\.0, inf, 9\.0\] is not finite"):
        pool(_feats(), torch.tensor([[0, 0, 0, float("inf"), 9.0]]))
    rows, feats = torch.tensor([[1, 0, 0, 30, 30.0]]), _feats()
    assert torch.equal(pool(feats, rows), pool(feats, [torch.zeros(0, 4), rows[:, 1:]]))


def test_box_dtype_and_device() -> None:
    pool = MultiLevelRoIPool(STRIDES)
    feats = _feats(1)
    with pytest.raises(TypeError, match=r"boxes\[0\] has dtype torch\.bool; boxes are real"):
        pool(feats, [torch.ones(1, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"boxes\[0\] is on meta but the feature maps are on cpu; move the boxes"):
        pool(feats, [torch.zeros(1, 4, device="meta")])
    ints = pool(feats, [torch.tensor([[0, 0, 30, 30]])])  # integer pixel boxes are plain coordinates
    assert torch.equal(ints, pool(feats, [torch.tensor([[0, 0, 30, 30.0]])]))


def test_feature_dtype_size_and_device() -> None:
    pool = MultiLevelRoIPool(STRIDES)
    boxes = [torch.tensor([[0, 0, 30, 30.0]])]
    with pytest.raises(TypeError, match=r"feature map 0 has dtype torch\.int64; RoI pooling needs floating-point"):
        pool([f.long() for f in _feats(1)], boxes)
    empty = _feats(1)
    empty[3] = torch.zeros(1, C, 0, 2)
    with pytest.raises(ValueError, match=r"feature map 3 has an empty spatial size \(1, 8, 0, 2\)"):
        pool(empty, boxes)
    mixed = _feats(1)
    mixed[1] = mixed[1].to("meta")
    with pytest.raises(ValueError, match=r"different devices \['cpu', 'meta', 'cpu', 'cpu'\]"):
        pool(mixed, boxes)


def test_empty_box_lists_pool_nothing() -> None:
    for pool in _poolers():
        out = pool(_feats(), [torch.zeros(0, 4), torch.zeros(0, 4)])
        assert out.shape[0] == 0


def test_huge_boxes_with_adaptive_sampling_are_refused_not_hung() -> None:
    pool = MultiLevelRoIPool(STRIDES, sampling_ratio=0, aligned=True)
    box = [torch.tensor([[0, 0, 1e9, 20.0]])]
    with pytest.raises(ValueError, match=r"spans 1e\+09 pixels, which adaptive sampling.*clip_boxes_to_image"):
        pool(_feats(1), box)
    assert pool(_feats(1), [torch.tensor([[0, 0, 5000, 5000.0]])]).shape == (1, C, 7, 7)  # large but real
    fixed = MultiLevelRoIPool(STRIDES, sampling_ratio=2)
    assert torch.isfinite(fixed(_feats(1), box)).all()  # fixed sampling: cost does not grow with the box


def test_constructor_arguments_are_typed() -> None:
    with pytest.raises(TypeError, match=r"sampling_ratio .* must be an int, got 2\.5"):
        MultiLevelRoIPool(STRIDES, sampling_ratio=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"aligned must be True or False, got 'yes'"):
        MultiLevelRoIPool(STRIDES, aligned="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"canonical \(box size of level k0\) must be > 0"):
        MultiLevelRoIPool(STRIDES, canonical=-224)
    with pytest.raises(TypeError, match=r"AdaptiveFeaturePooling: hidden must be an int, got 8\.5"):
        AdaptiveFeaturePooling(STRIDES, channels=C, hidden=8.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"AdaptiveFeaturePooling: channels must be >= 1, got 0"):
        AdaptiveFeaturePooling(STRIDES, channels=0)
    with pytest.raises(ValueError, match=r"unknown AdaptiveFeaturePooling norm 'ln'"):
        AdaptiveFeaturePooling(STRIDES, channels=C, norm="ln")
    with pytest.raises(ValueError, match=r"output_size must be an int or an \(h, w\) pair of ints, got \(True, 7\)"):
        MultiLevelRoIPool(STRIDES, output_size=(True, 7))
    pool = MultiLevelRoIPool(np.array(STRIDES).tolist(), output_size=np.int64(5), sampling_ratio=np.int64(2))
    assert pool.output_size == (5, 5) and pool.strides == tuple(STRIDES)


def test_image_shapes_are_checked() -> None:
    pool = MultiLevelRoIPool()
    boxes = [torch.tensor([[0, 0, 30, 30.0]])]
    with pytest.raises(ValueError, match=r"image_shapes\[0\] must be an \(H, W\) pair of positive ints, got \(0, 64\)"):
        pool(_feats(1), boxes, [(0, 64)])
    assert pool(_feats(1), boxes, [(64, 64)]).shape == (1, C, 7, 7)


def test_fc_norms_that_cannot_normalise_are_refused() -> None:
    with pytest.raises(ValueError, match=r"norm='gn' on the fc layer puts hidden=16 features into 16 groups of one"):
        AdaptiveFeaturePooling(STRIDES, channels=C, hidden=16, norm="gn")
    bn = AdaptiveFeaturePooling(STRIDES, channels=C, hidden=16, norm="bn").train()
    with pytest.raises(ValueError, match=r"a training forward with one RoI, but the fc layer's BatchNorm1d"):
        bn(_feats(1), [torch.tensor([[0, 0, 30, 30.0]])])
    assert bn(_feats(1), [torch.tensor([[0, 0, 30, 30.0], [4, 4, 20, 20]])]).shape == (2, 16)
    assert bn.eval()(_feats(1), [torch.tensor([[0, 0, 30, 30.0]])]).shape == (1, 16)
    gn = AdaptiveFeaturePooling(STRIDES, channels=C, hidden=64, norm="gn")
    assert gn(_feats(1), [torch.tensor([[0, 0, 30, 30.0]])]).shape == (1, 64)


def test_int_and_half_boxes_together_do_not_overflow_to_inf() -> None:
    # int64 boxes next to float16 ones used to be concatenated as float16, where 1e6 is inf: a crash in roi_align
    pool = AdaptiveFeaturePooling(STRIDES, channels=C, layer="conv")
    boxes = [torch.tensor([[1_000_000, 5, -1_000_000, 5]]), torch.tensor([[6.7, 0.1, 1.5, 12.2]], dtype=torch.float16)]
    assert pool(_feats(), boxes).shape == (2, C, 7, 7)
    half = [f.half() for f in _feats()]
    with pytest.raises(ValueError, match=r"box \[1000000\.0, 5\.0, -1000000\.0, 5\.0\] of image 0 does not fit in"):
        MultiLevelRoIPool(STRIDES)(half, boxes)
