"""Training-step peak memory: at or below the peers' necks holding the same weights (the performance target).

The measurement is ``benchmarks/vs_peers.py``'s (``common.peak_memory_bytes``): the peak of new tensor memory in
torch's CPU allocator during one forward + backward of ``sum(out.sum())`` in train mode with inputs requiring
grad, read from ``torch.profiler`` allocation events. It counts bytes, not time, so it is deterministic and small
sizes suffice. Causes guarded here (each assertion fails with the engine's earlier behaviour):

- node order: running FPN's 3x3 output convs after *all* lateral sums made backward compute their gradients
  before the largest lateral's backward, and hold them at its peak (:func:`necklace.graph.engine._schedule`);
- NAS-FPN: a chain of ``steps`` 2x2 max-pools kept every intermediate map and its int64 indices for backward
  (one ``2**steps`` pool, as mmcv does, keeps one index map);
- YOLOv6 ``RepConv``: the branch order decides backward's order (mmyolo's: identity, 3x3, 1x1).
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import necklace
import necklace.bench
from necklace import FeatureSpec
from necklace.bench import peak_memory_bytes
from necklace.graph.engine import _schedule
from necklace.layers import Resample

_HAS_MMDET = importlib.util.find_spec("mmdet") is not None and importlib.util.find_spec("mmcv") is not None
_HAS_MMYOLO = _HAS_MMDET and importlib.util.find_spec("mmyolo") is not None


@pytest.fixture(autouse=True)
def _benchmark_threads() -> Iterator[None]:
    """vs_peers' two threads: the conv backward's temporaries, hence the peaks, depend on the thread count (the
    suite runs single-threaded, where the FPN ordering difference below does not show)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors allocated during ``fn()`` and alive at once (vs_peers' measurement)."""
    measured = peak_memory_bytes(fn)
    assert measured["events"], "the profiler recorded no allocation: the measurement would pass vacuously"
    return measured["peak_bytes"]


def train_step(module: nn.Module, call: Callable[[list[Tensor]], Sequence[Tensor]], feats: list[Tensor]) -> int:
    """Peak bytes of one train-mode forward + backward of ``sum(out.sum())`` (vs_peers' ``_train_step``)."""
    module.train()
    step = necklace.bench.train_step(module, feats, call)
    step()  # warm up (lazy allocations, BN state)
    return peak_bytes(step)


def _feats(specs: Sequence[FeatureSpec], size: tuple[int, int], seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, s.channels, *s.size_for(*size), generator=g).requires_grad_(True) for s in specs]


def _assert_same_grads(grads: list[Tensor], feats: list[Tensor]) -> None:
    assert len(grads) == len(feats)
    for i, (a, f) in enumerate(zip(grads, feats, strict=True)):
        assert f.grad is not None
        assert torch.equal(a, f.grad), f"input {i}: gradients differ by {(a - f.grad).abs().max().item():.3g}"


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------- torchvision FPN
R50 = (FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32))


def test_fpn_schedule_runs_each_output_conv_after_its_sum() -> None:
    neck = necklace.build_neck("fpn", R50, levels=(3, 5))
    assert [n.name for n in neck.graph.nodes] == ["L5", "L4", "L3", "P5", "P4", "P3"]  # the graph as written
    assert [n.name for n in _schedule(neck.graph)] == ["L5", "P5", "L4", "P4", "L3", "P3"]  # as torchvision runs


@pytest.mark.parametrize("size", [(384, 384), (448, 448)])
def test_fpn_train_step_peak_at_most_torchvision(size: tuple[int, int]) -> None:
    """R50 C3-C5 -> 256, P3-P5 (vs_peers' r50_fpn at smaller images). Run in the graph's own node order (all
    laterals, then all output convs) it peaks above torchvision at both sizes: 24.4 vs 23.2 MB, 30.6 vs 27.2 MB."""
    tv_ops = pytest.importorskip("torchvision.ops")
    from necklace.convert import fpn_from_torchvision

    torch.manual_seed(0)
    tv = tv_ops.FeaturePyramidNetwork([s.channels for s in R50], 256)
    neck = fpn_from_torchvision(tv, R50)
    feats = _feats(R50, size)
    keys = [f"c{s.level}" for s in R50]

    def tv_call(fs: list[Tensor]) -> list[Tensor]:
        return list(tv(OrderedDict(zip(keys, fs, strict=True))).values())

    ours = train_step(neck, neck, feats)
    grads = [f.grad.clone() for f in feats if f.grad is not None]
    theirs = train_step(tv, tv_call, feats)
    _assert_same_grads(grads, feats)  # same function, same order of ops: the same gradient bits
    assert ours <= theirs, f"necklace FPN train-step peak {ours / 2**20:.2f} MB > torchvision's {theirs / 2**20:.2f} MB"


# ------------------------------------------------------------------------------------------------- NAS-FPN
def test_multi_step_maxpool2_keeps_one_index_map() -> None:
    """A 4x (steps=2) ``maxpool2`` edge: the values and gradient of one ceil 4x4 pool, and its memory."""
    edge = Resample(8, 8, steps=2, down="maxpool2")
    x = torch.randn(1, 8, 61, 83, requires_grad=True)
    size = (-(-61 // 4), -(-83 // 4))

    def ours() -> None:
        x.grad = None
        edge(x, size).sum().backward()

    def single_pool() -> None:
        x.grad = None
        F.max_pool2d(x, 4, 4, ceil_mode=True).sum().backward()

    y = edge(x, size)
    chain = F.max_pool2d(F.max_pool2d(x, 2, 2, ceil_mode=True), 2, 2, ceil_mode=True)
    assert y.shape[-2:] == size and torch.equal(y, chain)
    ours()
    assert x.grad is not None
    g = x.grad.clone()
    single_pool()
    assert torch.equal(g, x.grad)
    assert peak_bytes(ours) <= peak_bytes(single_pool)


@pytest.mark.skipif(not _HAS_MMDET, reason="mmdet / mmcv not installed")
def test_nasfpn_train_step_peak_at_most_mmdet() -> None:
    from _mmdet_shim import import_mmdet_necks
    from necklace.convert import from_mmdet_nasfpn

    specs = (FeatureSpec(32, 4), FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
    torch.manual_seed(0)
    mm = import_mmdet_necks().NASFPN(
        in_channels=[s.channels for s in specs],
        out_channels=64,
        num_outs=5,
        stack_times=2,
        start_level=1,
        norm_cfg=dict(type="BN", requires_grad=True),
    )
    _randomize(mm)
    neck = necklace.build_neck("nasfpn", specs, width=64, stack_times=2, levels=(3, 7), norm="bn")
    neck.load_state_dict(from_mmdet_nasfpn(mm, neck))
    feats = _feats(specs, (256, 256))
    ours = train_step(neck, neck, feats)
    theirs = train_step(mm, lambda fs: list(mm(tuple(fs))), feats)
    assert ours <= theirs, f"necklace NAS-FPN train-step peak {ours / 2**20:.2f} MB > mmdet's {theirs / 2**20:.2f} MB"


# ------------------------------------------------------------------------------------------------ YOLOv6-N
@pytest.mark.skipif(not _HAS_MMYOLO, reason="mmyolo / mmdet / mmcv not installed")
def test_yolov6n_train_step_peak_at_most_mmyolo() -> None:
    from _mmdet_shim import install_ext_shim

    install_ext_shim()
    import mmyolo.models.necks as necks
    from mmengine.registry import DefaultScope

    from necklace.convert import from_mmyolo_reppafpn

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmyolo"):  # RepStageBlock builds RepVGGBlock by registry name
        mm = necks.YOLOv6RepPAFPN(
            in_channels=[256, 512, 1024],
            out_channels=[128, 256, 512],
            deepen_factor=0.33,
            widen_factor=0.25,
            num_csp_blocks=12,
            norm_cfg=dict(type="BN", momentum=0.03, eps=0.001),
            act_cfg=dict(type="ReLU", inplace=True),
            block_cfg=dict(type="RepVGGBlock"),
        )
    _randomize(mm)
    specs = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
    neck = necklace.build_neck("rep_pafpn", specs, preset="n")
    neck.load_state_dict(from_mmyolo_reppafpn(mm, neck))
    feats = _feats(specs, (320, 320))
    ours = train_step(neck, neck, feats)
    grads = [f.grad.clone() for f in feats if f.grad is not None]
    theirs = train_step(mm, lambda fs: list(mm(list(fs))), feats)
    assert ours <= theirs, f"necklace YOLOv6-N train-step peak {ours / 2**20:.2f} MB > mmyolo's {theirs / 2**20:.2f} MB"
    _assert_same_grads(grads, feats)  # RepConv sums the branches' gradients in mmyolo's order: the same bits


# --------------------------------------------------------------------------------------- inference (eval) peak
def test_yolov8n_eval_peak_at_most_ultralytics() -> None:
    """An eval forward holds no resampled input alive while a node's block runs: YOLOv8n's peak equals
    ultralytics' (holding them regressed it by 22% at 640x640: 17.2 vs 14.1 MB)."""
    if importlib.util.find_spec("ultralytics") is None:  # not imported here: it patches PIL/torch.save
        pytest.skip("ultralytics is not installed (pip install -e '.[parity]')")
    from necklace.bench.peers import ultralytics_yolov8_pair

    specs = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
    pair = ultralytics_yolov8_pair("n", specs)
    assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
    feats = [f.detach() for f in _feats(specs, (320, 320))]
    call, peer = pair.call, pair.peer_module

    def ours() -> None:
        with torch.no_grad():
            pair.necklace(list(feats))  # type: ignore[misc]

    def theirs() -> None:
        with torch.no_grad():
            call(peer, list(feats))

    ours(), theirs()  # warm-up
    a, b = peak_bytes(ours), peak_bytes(theirs)
    assert a <= b, f"necklace YOLOv8n eval peak {a / 2**20:.2f} MB > ultralytics' {b / 2**20:.2f} MB"
