"""Detection with any necklace neck: backbones that describe their outputs with FeatureSpecs, torchvision's
FCOS / RetinaNet / Faster R-CNN with a neck in place of their FPN, and data (a seeded synthetic multi-scale
dataset, COCO JSON and YOLO txt loaders that report malformed annotations), training (``necklace.detection.train``:
one process or torchrun DDP, exact resume) and COCO evaluation (``necklace.detection.evaluate``: faster-coco-eval
or pycocotools), neck comparisons (``necklace.detection.compare``: train, evaluate and profile every neck over
seeds, report mean ± std and whether differences exceed the seed noise) and per-level feature heatmaps
(``necklace.detection.features``). The ``train``, ``evaluate`` and ``compare`` functions stay in those modules (the
names here are the modules).

Example:
    >>> from necklace.detection import SyntheticShapes, TinyBackbone, build_detector, collate_fn
    >>> images, targets = collate_fn([SyntheticShapes(1, image_size=(64, 64))[0]])
    >>> model = build_detector("retinanet", TinyBackbone(width=8), "fpn", num_classes=3,
    ...                        neck_options={"width": 16}, min_size=64, max_size=64)
    >>> sorted(model(images, targets))
    ['bbox_regression', 'classification']
"""

from necklace.detection.backbones import (
    Backbone,
    TimmBackbone,
    TinyBackbone,
    TorchvisionResNet,
    build_backbone,
    timm_backbone,
    torchvision_resnet,
)
from necklace.detection.compare import CompareConfig, CompareResult, NeckChoice
from necklace.detection.data import (
    LARGE_AREA,
    ON_ERROR,
    SHAPES,
    SMALL_AREA,
    AnnotationProblem,
    AnnotationReport,
    AnnotationWarning,
    CocoDetection,
    ImageRecord,
    SizeSplit,
    SyntheticShapes,
    YoloDetection,
    collate_fn,
    size_split,
    to_coco,
    to_yolo,
    validate_annotations,
)
from necklace.detection.detectors import DETECTOR_KINDS, ROI_POOLS, NeckAdapter, anchor_generator_for, build_detector
from necklace.detection.evaluate import CocoMetrics, coco_metrics
from necklace.detection.features import draw_feature_heatmaps, feature_heatmaps
from necklace.detection.train import TrainConfig, TrainingInterrupted, TrainResult, load_model

__all__ = [
    "DETECTOR_KINDS",
    "LARGE_AREA",
    "ON_ERROR",
    "ROI_POOLS",
    "SHAPES",
    "SMALL_AREA",
    "AnnotationProblem",
    "AnnotationReport",
    "AnnotationWarning",
    "Backbone",
    "CocoDetection",
    "CocoMetrics",
    "CompareConfig",
    "CompareResult",
    "ImageRecord",
    "NeckAdapter",
    "NeckChoice",
    "SizeSplit",
    "SyntheticShapes",
    "TimmBackbone",
    "TinyBackbone",
    "TorchvisionResNet",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "YoloDetection",
    "anchor_generator_for",
    "build_backbone",
    "build_detector",
    "coco_metrics",
    "collate_fn",
    "draw_feature_heatmaps",
    "feature_heatmaps",
    "load_model",
    "size_split",
    "timm_backbone",
    "to_coco",
    "to_yolo",
    "torchvision_resnet",
    "validate_annotations",
]
