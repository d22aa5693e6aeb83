"""The built-in necks, registered here in one place.

``RecursiveFPN`` (DetectoRS RFP) is exported but not registered: it wraps the backbone (image -> pyramid), so it
cannot be built from ``in_specs`` alone (see :mod:`necklace.necks.rfp`).
"""

from necklace.necks.augfpn import AUGFPN_KNOBS, AugFPN, augfpn, augfpn_graph
from necklace.necks.bifpn import BIFPN_KNOBS, BIFPN_PRESETS, bifpn, bifpn_graph
from necklace.necks.csp_pan import CSP_PAN_KNOBS, CSP_PAN_PRESETS, csp_pan, csp_pan_graph
from necklace.necks.fpn import FPN_KNOBS, fpn, fpn_graph
from necklace.necks.nasfpn import NASFPN_KNOBS, nasfpn, nasfpn_graph
from necklace.necks.pafpn import PAFPN_KNOBS, pafpn, pafpn_graph
from necklace.necks.rep_bifpan import REP_BIFPAN_KNOBS, rep_bifpan, rep_bifpan_graph
from necklace.necks.rep_pafpn import REP_PAFPN_KNOBS, YOLOV6_PRESETS, rep_pafpn, rep_pafpn_graph
from necklace.necks.rfp import FeedbackBackbone, RecursiveFPN, register_feedback_block, sac_backbone
from necklace.necks.yolo import (
    YOLO11_KNOBS,
    YOLO11_PRESETS,
    YOLO_KNOBS,
    YOLO_PRESETS,
    yolo11_pafpn,
    yolo11_pafpn_graph,
    yolo_pafpn,
    yolo_pafpn_graph,
)
from necklace.registry import register_neck

__all__ = [
    "BIFPN_PRESETS",
    "CSP_PAN_PRESETS",
    "YOLO11_PRESETS",
    "YOLOV6_PRESETS",
    "YOLO_PRESETS",
    "AugFPN",
    "FeedbackBackbone",
    "RecursiveFPN",
    "augfpn",
    "augfpn_graph",
    "bifpn",
    "bifpn_graph",
    "csp_pan",
    "csp_pan_graph",
    "fpn",
    "fpn_graph",
    "nasfpn",
    "nasfpn_graph",
    "pafpn",
    "pafpn_graph",
    "register_feedback_block",
    "rep_bifpan",
    "rep_bifpan_graph",
    "rep_pafpn",
    "rep_pafpn_graph",
    "sac_backbone",
    "yolo11_pafpn",
    "yolo11_pafpn_graph",
    "yolo_pafpn",
    "yolo_pafpn_graph",
]

register_neck(
    "fpn",
    fpn,
    summary="top-down pathway + 1x1 laterals + 3x3 outputs; extra P6/P7 by subsampling or stride-2 convs",
    paper="Lin et al., Feature Pyramid Networks for Object Detection, CVPR 2017",
    knobs=FPN_KNOBS,
)
register_neck(
    "pafpn",
    pafpn,
    summary="FPN + bottom-up path augmentation (mmdet PAFPN or official PANet variant)",
    paper="Liu et al., Path Aggregation Network for Instance Segmentation, CVPR 2018",
    knobs=PAFPN_KNOBS,
)
register_neck(
    "bifpn",
    bifpn,
    summary="repeated weighted bidirectional cells, single-input nodes removed, separable convs (EfficientDet D0-D7)",
    paper="Tan et al., EfficientDet: Scalable and Efficient Object Detection, CVPR 2020",
    knobs=BIFPN_KNOBS,
)
register_neck(
    "nasfpn",
    nasfpn,
    summary="stacked NAS-searched merge cells (sum / global-pooling attention) over P3-P7, ReLU-conv-BN outputs",
    paper="Ghiasi et al., NAS-FPN: Learning Scalable Feature Pyramid Architecture for Object Detection, CVPR 2019",
    knobs=NASFPN_KNOBS,
)
register_neck(
    "yolo_pafpn",
    yolo_pafpn,
    summary="YOLOv8-style PAFPN: upsample + concat + C2f top-down, stride-2 conv + concat + C2f bottom-up",
    paper="Jocher et al., Ultralytics YOLOv8, 2023 (PAN neck of Liu et al., 2018)",
    knobs=YOLO_KNOBS,
)
register_neck(
    "yolo11_pafpn",
    yolo11_pafpn,
    summary="YOLO11 PAFPN: YOLOv8's topology with C3k2 blocks (residual half-width bottlenecks / C3k in the last)",
    paper="Jocher & Qiu, Ultralytics YOLO11, 2024 (PAN neck of Liu et al., 2018)",
    knobs=YOLO11_KNOBS,
)
register_neck(
    "rep_pafpn",
    rep_pafpn,
    summary="YOLOv6 RepPAN: 1x1 reduce + transposed-conv up + concat + RepBlock, 3x3/2 conv + concat bottom-up",
    paper="Li et al., YOLOv6: A Single-Stage Object Detection Framework for Industrial Applications, 2022",
    knobs=REP_PAFPN_KNOBS,
)
register_neck(
    "rep_bifpan",
    rep_bifpan,
    summary="YOLOv6 v3 RepBiFPAN: RepPAN with BiFusion (up + same level + 3x3/2 of the finer level) top-down",
    paper="Li et al., YOLOv6 v3.0: A Full-Scale Reloading, 2023",
    knobs=REP_BIFPAN_KNOBS,
)
register_neck(
    "csp_pan",
    csp_pan,
    summary="PP-PicoDet CSP-PAN: 1x1 to one width, depthwise CSP blocks, 5x5/2 depthwise downsampling, extra P6",
    paper="Yu et al., PP-PicoDet: A Better Real-Time Object Detector on Mobile Devices, 2021",
    knobs=CSP_PAN_KNOBS,
)
register_neck(
    "augfpn",
    augfpn,
    summary="FPN + residual feature augmentation (ratio-invariant adaptive pooling of C5, adaptive spatial fusion) "
    "added to the top lateral; laterals exposed for consistent supervision",
    paper="Guo et al., AugFPN: Improving Multi-scale Feature Learning for Object Detection, CVPR 2020",
    knobs=AUGFPN_KNOBS,
)
