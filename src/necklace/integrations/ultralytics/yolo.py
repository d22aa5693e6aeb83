"""The Ultralytics entry points for necklace-necked models: :class:`NecklaceYOLO` and its trainer.

``NecklaceYOLO`` is an Ultralytics ``YOLO`` whose ``task_map`` names :class:`~necklace.integrations.ultralytics.
model.NecklaceDetectionModel` and :class:`NecklaceDetectionTrainer` for ``detect`` (validator and predictor are
Ultralytics' own); the trainer's ``get_model`` rebuilds the model from its YAML's ``necklace`` section, which is
what training from a model object, fine-tuning a checkpoint and ``resume=True`` go through. Everything else is
Ultralytics' code, unchanged.

Resuming: ``NecklaceYOLO("runs/detect/train/weights/last.pt").train(resume=True)``. Plain
``YOLO("last.pt").train(resume=True)`` (and ``yolo train resume model=last.pt``) uses Ultralytics' stock
``DetectionTrainer``, which rebuilds the model with ``parse_model``; that cannot build the neck row and stops with
``KeyError`` whose text says to use ``NecklaceYOLO`` (:data:`~necklace.integrations.ultralytics.model.
NECK_ROW_MODULE`). ``YOLO("best.pt")`` itself loads, predicts, validates and exports (it needs no rebuild).

Multi-GPU DDP: Ultralytics pickles the trainer class (by its import path, this module's) and the model object
into the file its worker script loads, so each worker gets this trainer and the necklace-necked model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from necklace.integrations.ultralytics.compat import check_ultralytics_version
from necklace.integrations.ultralytics.model import NecklaceDetectionModel, _load_cfg, is_necklace_cfg

try:
    from ultralytics.engine.model import Model
    from ultralytics.models import yolo
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.model import YOLO
    from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, RANK
except ImportError as e:
    check_ultralytics_version()
    raise ImportError(f"necklace's Ultralytics integration cannot import Ultralytics' trainer code: {e}") from e

__all__ = ["NecklaceDetectionTrainer", "NecklaceYOLO"]


class NecklaceDetectionTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` whose ``get_model`` builds a :class:`NecklaceDetectionModel` from the
    model YAML's ``necklace`` section (and loads ``weights`` into it, as Ultralytics does).

    ``NecklaceYOLO.train()`` uses it; it can also be passed as ``trainer=`` to ``model.train`` or built directly
    with ``overrides={"model": "last.pt", ...}``. A model YAML without a ``necklace`` section is refused with a
    ``ValueError`` (use Ultralytics' own trainer for stock models).

    Example:
        >>> NecklaceDetectionTrainer.__mro__[1].__name__
        'DetectionTrainer'
    """

    def __init__(
        self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None
    ) -> None:
        check_ultralytics_version()
        super().__init__(cfg, overrides, _callbacks)

    def get_model(
        self, cfg: Mapping[str, Any] | str | Path | None = None, weights: Any = None, verbose: bool = True
    ) -> NecklaceDetectionModel:
        """Build the necklace-necked model ``cfg`` (a model YAML dict or file with a ``necklace`` section) for the
        dataset's classes and channels, and load ``weights`` (a model) into it."""
        if isinstance(cfg, (str, Path)) and str(cfg).lower().endswith((".yaml", ".yml")):
            cfg = _load_cfg(cfg)  # a necklace model YAML file (ValueError when it has no necklace section)
        if not is_necklace_cfg(cfg):
            what = cfg.get("yaml_file", "a model YAML dict") if isinstance(cfg, Mapping) else repr(cfg)
            raise ValueError(
                f"NecklaceDetectionTrainer builds necklace-necked models; got {what}, which has no 'necklace' "
                "section. Train a necklace model (NecklaceYOLO(...).train(...) or build_yolo(...).train(...)), or a "
                "stock model with ultralytics.YOLO."
            )
        assert isinstance(cfg, Mapping)
        model = NecklaceDetectionModel(
            cfg, nc=self.data["nc"], ch=self.data.get("channels", 3), verbose=verbose and RANK == -1
        )
        set_names = getattr(self, "set_model_names_for_load", None)  # Ultralytics >= 8.4: names before load
        if set_names is not None:
            model = set_names(model)
        if weights:
            model.load(weights)
        return model


class NecklaceYOLO(YOLO):
    """An Ultralytics ``YOLO`` for necklace-necked detection models: train / val / predict / export / save as usual.

    ``model`` is a model YAML dict or file with a ``necklace`` section (what :func:`~necklace.integrations.
    ultralytics.build_yolo` makes), a checkpoint written by Ultralytics for such a model (``last.pt`` /
    ``best.pt``, also to resume: ``NecklaceYOLO("last.pt").train(resume=True)``), or a ``YOLO`` / ``NecklaceYOLO``
    holding one. A model built from a YAML trains from its current weights (as after Ultralytics'
    ``YOLO.load(module)``), so converted or pretrained weights carry into training.

    ``export()`` defaults to ``simplify=False`` for the formats that take it (ONNX, TensorRT, ...) when
    ``onnxslim`` is not installed (Ultralytics would pip-install it during the export); pass ``simplify=True`` to
    let it.

    Example:
        >>> from ultralytics.nn.tasks import yaml_model_load
        >>> cfg = yaml_model_load("yolov8n.yaml")
        >>> cfg["necklace"] = {"neck": "yolo_pafpn", "options": {"preset": "n"}, "levels": [3, 5]}
        >>> yolo = NecklaceYOLO(cfg)
        >>> type(yolo.model).__name__, yolo.task, yolo.model.neck_layer.type
        ('NecklaceDetectionModel', 'detect', 'necklace.yolo_pafpn')
    """

    def __init__(
        self,
        model: str | Path | Mapping[str, Any] | Model,
        task: str | None = None,
        verbose: bool = False,
    ) -> None:
        check_ultralytics_version()
        if task not in (None, "detect"):
            raise ValueError(f"NecklaceYOLO is for detection models (task 'detect'), got task={task!r}.")
        if isinstance(model, Mapping):
            cfg = _load_cfg(model)
            name = str(cfg.get("yaml_file") or "necklace.yaml")
            if not name.lower().endswith((".yaml", ".yml")):
                name += ".yaml"
            object.__setattr__(self, "_necklace_cfg", cfg)  # read by _new (Model.__init__ dispatches YAMLs there)
            model = name
        super().__init__(model=model, task="detect", verbose=verbose)
        if not isinstance(self.model, NecklaceDetectionModel):
            raise ValueError(
                f"{model!r} holds a {type(self.model).__name__}, not a necklace-necked model. Load plain "
                "Ultralytics models with ultralytics.YOLO; put a necklace neck into one with "
                "necklace.integrations.ultralytics.build_yolo(model, neck=...)."
            )

    def _new(self, cfg: str, task: str | None = None, verbose: bool = False) -> None:
        """Build the model from a necklace model YAML (the dict given to ``__init__``, or the file ``cfg``); the
        rest is what Ultralytics' ``Model._new`` does, plus ``ckpt = {"model": model}`` so that training starts
        from this model's weights."""
        cfg_dict = self.__dict__.pop("_necklace_cfg", None)
        if cfg_dict is None:
            cfg_dict = _load_cfg(cfg)
        model: Any = NecklaceDetectionModel(cfg_dict, verbose=verbose and RANK == -1)
        me: Any = self  # Ultralytics' Model declares these attributes None / str
        me.cfg = cfg
        me.task = "detect"
        me.model = model
        me.overrides["model"] = cfg
        me.overrides["task"] = "detect"
        model.args = {**DEFAULT_CFG_DICT, **me.overrides}
        model.task = "detect"
        me.model_name = cfg
        me.ckpt = {"model": model}

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """``detect`` -> NecklaceDetectionModel, NecklaceDetectionTrainer, Ultralytics' validator and predictor."""
        return {
            "detect": {
                "model": NecklaceDetectionModel,
                "trainer": NecklaceDetectionTrainer,
                "validator": yolo.detect.DetectionValidator,
                "predictor": yolo.detect.DetectionPredictor,
            }
        }

    def export(self, **kwargs: Any) -> str:
        """Ultralytics' ``export``; ``simplify`` defaults to whether ``onnxslim`` is installed (no install at
        export time)."""
        from ultralytics.engine.exporter import export_formats

        fmt = str(kwargs.get("format", self.overrides.get("format", DEFAULT_CFG_DICT["format"]))).lower()
        table = export_formats()
        takes = dict(zip(table["Argument"], table["Arguments"], strict=True)).get(fmt, [])
        if "simplify" in takes and "simplify" not in kwargs and importlib.util.find_spec("onnxslim") is None:
            kwargs["simplify"] = False
        return str(super().export(**kwargs))
