"""necklace necks vs the peers' necks: same configuration, same weights, equal outputs, interleaved timing.

:func:`compare` builds a peer library's neck with random weights (:func:`randomize`), the necklace neck with
the options that reproduce it, loaded with the peer's weights through :mod:`necklace.convert` (the ultralytics
neck is mapped key by key by :func:`ultralytics_to_necklace`), checks that both give the same outputs on random
backbone maps, then times both in this process, *interleaved* (:func:`necklace.bench.interleaved`: each round
runs each neck once, the first one alternating), and reports the median of the per-round ratios
``t_necklace / t_peer`` (< 1: necklace is faster), MACs and achieved GMAC/s of both.

Supported pairs (``necklace bench NAME --vs PEER`` on the command line), with their default inputs:

- ``fpn`` vs torchvision ``FeaturePyramidNetwork``: ResNet-50 C3-C5 inputs, 640x640, option ``width`` (256);
- ``fpn`` / ``pafpn`` vs mmdet ``FPN`` / ``PAFPN``: the same;
- ``nasfpn`` vs mmdet ``NASFPN`` (RetinaNet config, BN): ResNet-50 C2-C5 (C2 unused), 640x640 (sizes divisible by
  128), options ``width`` (256), ``stack_times`` (7);
- ``bifpn`` vs efficientdet-pytorch ``BiFpn`` (``tf_efficientdet_<preset>``): EfficientNet inputs of the preset,
  its image size (d0: B0, 512x512), option ``preset`` (d0);
- ``yolo_pafpn`` vs ultralytics YOLOv8 layers 10-21 (:class:`UltralyticsNeck`): the preset's P3-P5 (n: 64/128/256),
  640x640 (sizes divisible by 32), option ``preset`` (n);
- ``yolo11_pafpn`` vs ultralytics YOLO11 layers 11-22: the preset's P3-P5 (n: 128/128/256), 640x640 (sizes
  divisible by 32), option ``preset`` (n);
- ``rep_pafpn`` vs mmyolo ``YOLOv6RepPAFPN`` (its ``yolov6_<preset>`` config): the preset's P3-P5 (n:
  64/128/256), 640x640 (sizes divisible by 32), option ``preset`` (n or s).

The peers come with the extras: ``pip install -e '.[parity]'`` (effdet, ultralytics) and
``pip install -e '.[parity-mmdet]'`` then ``pip install --no-deps mmdet==3.3.0 mmyolo==0.6.0`` (mmdet, mmyolo on
mmcv-lite: :func:`import_mmdet_necks` installs a placeholder for mmcv's compiled ops, which no neck calls).

The lower-level pieces (:class:`Pair`, the ``*_pair`` builders, :func:`parity`, :func:`deploy_necklace`,
:func:`deploy_peer`) are what ``benchmarks/vs_peers.py`` runs its configs with.

Example:
    >>> r = compare("fpn", "torchvision", image_size=(64, 64), options={"width": 32}, repeats=2, warmup=0)
    >>> r.peer_module, r.equal, r.max_abs_diff <= r.tolerance
    ('torchvision FeaturePyramidNetwork', True, True)
    >>> r.macs_necklace == r.macs_peer > 0, r.params_necklace == r.params_peer, r.ratio > 0
    (True, True, True)
"""

from __future__ import annotations

from necklace.bench.peers.checks import (
    bind,
    deploy_necklace,
    deploy_peer,
    equality,
    eval_call,
    max_abs_diff,
    parity,
)
from necklace.bench.peers.compare import (
    PeerComparison,
    check_pair,
    compare,
    supported_pairs,
)
from necklace.bench.peers.pairs import (
    DEPLOY_TOL,
    MMYOLO_DIVISIBLE,
    MMYOLO_FACTORS,
    NASFPN_DIVISIBLE,
    NO_PEER_DEPLOY,
    PEERS,
    R50_C2,
    TOL,
    ULTRALYTICS_DIVISIBLE,
    Call,
    Pair,
    PeerCall,
    calibrate_bn,
    check_divisible,
    effdet_bifpn_pair,
    import_mmdet_necks,
    import_mmyolo_necks,
    install_mmcv_ext_shim,
    mmdet_nasfpn_pair,
    mmdet_pair,
    mmyolo_in_specs,
    mmyolo_reppafpn_pair,
    mmyolo_switch_to_deploy,
    randomize,
    torchvision_fpn_pair,
)
from necklace.bench.peers.ultralytics import (
    YOLO_LAYER_MAP,
    UltralyticsNeck,
    ultralytics_fuse,
    ultralytics_to_necklace,
    ultralytics_yolo11_pair,
    ultralytics_yolov8_pair,
)

__all__ = [
    "DEPLOY_TOL",
    "MMYOLO_DIVISIBLE",
    "MMYOLO_FACTORS",
    "NASFPN_DIVISIBLE",
    "NO_PEER_DEPLOY",
    "PEERS",
    "R50_C2",
    "TOL",
    "ULTRALYTICS_DIVISIBLE",
    "YOLO_LAYER_MAP",
    "Call",
    "Pair",
    "PeerCall",
    "PeerComparison",
    "UltralyticsNeck",
    "bind",
    "calibrate_bn",
    "check_divisible",
    "check_pair",
    "compare",
    "deploy_necklace",
    "deploy_peer",
    "effdet_bifpn_pair",
    "equality",
    "eval_call",
    "import_mmdet_necks",
    "import_mmyolo_necks",
    "install_mmcv_ext_shim",
    "max_abs_diff",
    "mmdet_nasfpn_pair",
    "mmdet_pair",
    "mmyolo_in_specs",
    "mmyolo_reppafpn_pair",
    "mmyolo_switch_to_deploy",
    "parity",
    "randomize",
    "supported_pairs",
    "torchvision_fpn_pair",
    "ultralytics_fuse",
    "ultralytics_to_necklace",
    "ultralytics_yolo11_pair",
    "ultralytics_yolov8_pair",
]
