"""Any necklace neck inside an Ultralytics YOLOv8 / YOLO11 detector, trained, validated, saved and exported by
Ultralytics itself, with no edits to Ultralytics (``pip install 'necklace[ultralytics]'``).

Example::

    from necklace.integrations.ultralytics import build_yolo, NecklaceYOLO

    model = build_yolo("yolov8n.yaml", "bifpn")            # YOLOv8n, BiFPN neck (fast normalised fusion), P3-P5
    model.train(data="data.yaml", epochs=10, imgsz=640)    # Ultralytics' trainer, loss, EMA, checkpoints
    model.val(); model.predict("image.jpg"); model.export(format="onnx")
    NecklaceYOLO("runs/detect/train/weights/last.pt").train(resume=True)   # resume an interrupted run

- :func:`build_yolo`: a ``YOLO`` / ``DetectionModel`` / model YAML name / local checkpoint + a registered neck
  (or a ``NeckGraph`` / graph file) at the levels you pick (P3-P5, P2-P5, P3-P6) -> :class:`NecklaceYOLO`.
- :func:`from_ultralytics`: a stock YOLOv8 / YOLO11 with its neck replaced by necklace's ``yolo_pafpn`` /
  ``yolo11_pafpn`` carrying the converted weights (equal outputs, losses and training).
- :func:`train_yolo`: Ultralytics' training of any ``YOLO`` on a ``data.yaml`` with a seed and schedule, returning
  its metrics (:class:`YoloRun`).
- :func:`coco_evaluate`: COCO AP of a YOLO model overall and per object size (small / medium / large), by
  necklace's evaluator on the letterboxed images of a ``data.yaml`` split (``necklace compare --detector yolov8n``).
- :class:`NecklaceYOLO` loads checkpoints of such models (``last.pt`` / ``best.pt``) and resumes them; plain
  ``ultralytics.YOLO("best.pt")`` loads them too for predict / val / export (necklace must be importable).

Supported Ultralytics versions: :data:`SUPPORTED_ULTRALYTICS` (checked; any other version raises ``ImportError``
naming the range). See ``docs/ultralytics.md`` for worked examples, and :mod:`.model` for how the model is laid out.
"""

from necklace.integrations.ultralytics.compat import (
    SUPPORTED_ULTRALYTICS,
    check_ultralytics_version,
    supported_range,
    ultralytics_version,
)

check_ultralytics_version()

from necklace.integrations.ultralytics.build import (  # noqa: E402
    YoloRun,
    build_yolo,
    from_ultralytics,
    source_model,
    synthetic_yolo_dataset,
    train_yolo,
)
from necklace.integrations.ultralytics.evaluate import Letterbox, coco_evaluate, read_split  # noqa: E402
from necklace.integrations.ultralytics.model import (  # noqa: E402  (after the version check)
    NecklaceDetectionModel,
    NeckLayer,
    is_necklace_cfg,
    probe_backbone,
)
from necklace.integrations.ultralytics.yolo import NecklaceDetectionTrainer, NecklaceYOLO  # noqa: E402

__all__ = [
    "SUPPORTED_ULTRALYTICS",
    "Letterbox",
    "NeckLayer",
    "NecklaceDetectionModel",
    "NecklaceDetectionTrainer",
    "NecklaceYOLO",
    "YoloRun",
    "build_yolo",
    "check_ultralytics_version",
    "coco_evaluate",
    "from_ultralytics",
    "is_necklace_cfg",
    "probe_backbone",
    "read_split",
    "source_model",
    "supported_range",
    "synthetic_yolo_dataset",
    "train_yolo",
    "ultralytics_version",
]
