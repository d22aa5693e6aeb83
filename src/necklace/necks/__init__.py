"""The built-in necks, registered here in one place."""

from necklace.necks.bifpn import BIFPN_KNOBS, BIFPN_PRESETS, bifpn, bifpn_graph
from necklace.necks.fpn import FPN_KNOBS, fpn, fpn_graph
from necklace.necks.nasfpn import NASFPN_KNOBS, nasfpn, nasfpn_graph
from necklace.necks.pafpn import PAFPN_KNOBS, pafpn, pafpn_graph
from necklace.necks.yolo import YOLO_KNOBS, YOLO_PRESETS, yolo_pafpn, yolo_pafpn_graph
from necklace.registry import register_neck

__all__ = [
    "BIFPN_PRESETS",
    "YOLO_PRESETS",
    "bifpn",
    "bifpn_graph",
    "fpn",
    "fpn_graph",
    "nasfpn",
    "nasfpn_graph",
    "pafpn",
    "pafpn_graph",
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
