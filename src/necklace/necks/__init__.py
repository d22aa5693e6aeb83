"""The built-in necks. Each family registers its builders where they are defined (``@register_neck`` in
``necks/<family>.py``); importing this package (``import necklace`` does, eagerly) registers them all.

``RecursiveFPN`` (DetectoRS RFP) is exported but not registered: it wraps the backbone (image -> pyramid), so it
cannot be built from ``in_specs`` alone (see :mod:`necklace.necks.rfp`).
"""

from necklace.necks.augfpn import AugFPN, augfpn, augfpn_graph
from necklace.necks.bifpn import BIFPN_PRESETS, bifpn, bifpn_graph
from necklace.necks.csp_pan import CSP_PAN_PRESETS, csp_pan, csp_pan_graph
from necklace.necks.fpn import fpn, fpn_graph
from necklace.necks.nasfpn import nasfpn, nasfpn_graph
from necklace.necks.pafpn import pafpn, pafpn_graph
from necklace.necks.rep_bifpan import rep_bifpan, rep_bifpan_graph
from necklace.necks.rep_pafpn import YOLOV6_PRESETS, rep_pafpn, rep_pafpn_graph
from necklace.necks.rfp import FeedbackBackbone, RecursiveFPN, register_feedback_block, sac_backbone
from necklace.necks.searched import Candidate, searched, searched_graph
from necklace.necks.yolo import (
    YOLO11_PRESETS,
    YOLO_PRESETS,
    yolo11_pafpn,
    yolo11_pafpn_graph,
    yolo_pafpn,
    yolo_pafpn_graph,
)

__all__ = [
    "BIFPN_PRESETS",
    "CSP_PAN_PRESETS",
    "YOLO11_PRESETS",
    "YOLOV6_PRESETS",
    "YOLO_PRESETS",
    "AugFPN",
    "Candidate",
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
    "searched",
    "searched_graph",
    "yolo11_pafpn",
    "yolo11_pafpn_graph",
    "yolo_pafpn",
    "yolo_pafpn_graph",
]
