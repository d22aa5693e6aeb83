"""Detection data: a seeded procedural multi-scale dataset, COCO JSON and YOLO txt loaders, annotation checks.

Every dataset here returns ``(image, target)`` in torchvision's detection format: ``image`` a float tensor
``[3, H, W]`` in ``[0, 1]``; ``target`` a dict with ``boxes`` (``float32 [N, 4]``, ``x1, y1, x2, y2`` in pixels),
``labels`` (``int64 [N]``, ``1..K``; 0 is background), ``image_id`` (int), ``area`` (``float32 [N]``) and
``iscrowd`` (``int64 [N]``). :func:`collate_fn` batches them as lists for a ``DataLoader``.

- :class:`SyntheticShapes`: procedural images of textured shapes over cluttered backgrounds, objects spread
  over COCO's small (< 32^2), medium and large (> 96^2) areas, partial occlusion with boxes taken from the
  *visible* pixels; deterministic per index from the seed, optionally cached to disk.
- :class:`CocoDetection` / :class:`YoloDetection`: the two formats users have. Both check every annotation when built
  (:func:`validate_annotations`): boxes outside the image, zero/negative sizes, unknown class ids, missing image files
  or ones that do not decode in full (:func:`probe_image`), malformed lines. ``on_error="raise"`` stops with a summary
  (what, where, how many); ``"drop"`` skips the bad annotations (and images whose file is missing); ``"clip"`` clips
  boxes to the image and drops what cannot be repaired. Whatever is dropped or clipped is in ``dataset.report`` and
  announced with an :class:`AnnotationWarning`, so problems surface before training and never silently; an image that
  breaks after that is dropped mid-epoch under ``"drop"``/``"clip"`` (reported the same way), never a dead run.
- :func:`read_image` decodes any Pillow image to RGB by its real range (16-bit grayscale scaled, not clipped;
  palette images through their palette); :func:`check_same_classes` is the class-name check between data sets
  and checkpoints.
- :func:`to_coco` / :func:`to_yolo` write any of these datasets out (COCO annotation ids start at 1).

``area`` is the box area ``w * h`` (COCO's ``area`` field when a COCO file gives one), and :func:`size_split`
buckets objects by it with COCO's thresholds.
"""

from necklace.detection.data.coco import CocoDetection, to_coco
from necklace.detection.data.common import LARGE_AREA, SMALL_AREA, SizeSplit, check_same_classes, collate_fn, size_split
from necklace.detection.data.images import IMAGE_EXTS, probe_image, read_image
from necklace.detection.data.synthetic import SHAPES, SyntheticShapes
from necklace.detection.data.validate import (
    CHECK_IMAGES,
    ON_ERROR,
    AnnotationProblem,
    AnnotationReport,
    AnnotationWarning,
    ImageRecord,
    validate_annotations,
)
from necklace.detection.data.yolo import YoloDetection, to_yolo

__all__ = [
    "CHECK_IMAGES",
    "IMAGE_EXTS",
    "LARGE_AREA",
    "ON_ERROR",
    "SHAPES",
    "SMALL_AREA",
    "AnnotationProblem",
    "AnnotationReport",
    "AnnotationWarning",
    "CocoDetection",
    "ImageRecord",
    "SizeSplit",
    "SyntheticShapes",
    "YoloDetection",
    "check_same_classes",
    "collate_fn",
    "probe_image",
    "read_image",
    "size_split",
    "to_coco",
    "to_yolo",
    "validate_annotations",
]
