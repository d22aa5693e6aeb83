"""The runs of a comparison inside an Ultralytics YOLO detector: every neck trained by Ultralytics' trainer, loss
and schedule (:func:`~necklace.integrations.ultralytics.build_yolo` + ``model.train``), COCO-evaluated by
necklace's evaluator (:func:`~necklace.integrations.ultralytics.coco_evaluate`), and profiled.

Each run lives in ``<output>/runs/<neck>/seed<k>/``, which is Ultralytics' run directory (``weights/last.pt``,
``results.csv``, ``args.yaml``) plus ``necklace_run.json`` (the run's configuration, training time, Ultralytics'
own final metrics) and ``metrics.json`` (the COCO metrics; written last: the run is finished when it exists).
Calling the same comparison again reuses finished runs, resumes an interrupted one from its ``last.pt`` with
Ultralytics' ``resume=True`` (losing at most the epoch in flight), and restarts one interrupted before its first
checkpoint, or whose checkpoint is unreadable. Synthetic data is written once, under ``<output>/data/``.

Ultralytics is imported when a comparison runs, not when this module is imported; its console output goes to
stderr (stdout keeps the table), or nowhere without ``progress``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import math
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.bench import count_flops, count_params, measure_latency
from necklace.detection.compare.common import _loss_ends, _read_metrics, _say, _write_text
from necklace.detection.compare.config import CompareConfig, NeckChoice
from necklace.detection.compare.results import NeckProfile, RunResult
from necklace.detection.compare.yolo_config import RESUMABLE_YOLO_CHANGES, YoloTrainConfig
from necklace.detection.train import DataSpec, TrainingInterrupted

__all__ = ["RUN_RECORD", "YoloSession"]

#: the file in each run directory that records the run's configuration and what Ultralytics measured
RUN_RECORD = "necklace_run.json"
METRICS_FILE = "metrics.json"
#: Ultralytics' validation settings for the COCO evaluation and the detector latency (NMS included): confidence
#: floor, NMS IoU, detections kept per image (COCO's maxDets)
EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.7, 100


def _integration() -> types.ModuleType:
    """``necklace.integrations.ultralytics`` (ImportError naming the pip command when Ultralytics is missing)."""
    from necklace.integrations.ultralytics.compat import check_ultralytics_version

    check_ultralytics_version()
    return importlib.import_module("necklace.integrations.ultralytics")


@contextlib.contextmanager
def _console(progress: bool) -> Iterator[None]:
    """Ultralytics' console output (its logger and progress bars print to stdout) to stderr, or nowhere."""
    from ultralytics.utils import LOGGER

    sink: Any = sys.stderr if progress else io.StringIO()
    handlers = [h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(sink)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        for h, stream in zip(handlers, streams, strict=True):
            h.setStream(stream)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while Ultralytics trains (as Ctrl-C does), so both end the same way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _losses(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch total training loss (box + cls + dfl) from Ultralytics' ``results.csv``, one row per epoch (an
    epoch trained again after an interruption keeps its last row)."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    rows: dict[float, dict[str, float]] = {}
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {k.strip(): v for k, v in raw.items() if k}
            parts = [v for k, v in row.items() if k.startswith("train/") and k.endswith("_loss")]
            with contextlib.suppress(ValueError, TypeError):
                rows[float(row["epoch"])] = {"total": sum(float(v) for v in parts)}
    return [rows[k] for k in sorted(rows)]


def _checkpoint_state(last: Path) -> tuple[str, int]:
    """What ``last.pt`` says about its run, and how many epochs it holds: ``"missing"``, ``"unreadable"``,
    ``"finished"`` (Ultralytics stripped it: training ended), ``"epochs_done"`` (every epoch saved, Ultralytics'
    final step not reached) or ``"resumable"``."""
    if not last.is_file():
        return "missing", 0
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint cut short by an interruption while Ultralytics wrote it
        return "unreadable", 0
    if not isinstance(ckpt, dict):
        return "unreadable", 0
    epoch = int(ckpt.get("epoch", -1))
    epochs = int((ckpt.get("train_args") or {}).get("epochs", 0))
    if epoch < 0:
        return "finished", epochs
    if epoch + 1 >= epochs:
        return "epochs_done", epoch + 1
    return ("resumable" if ckpt.get("optimizer") else "unreadable"), epoch + 1


class YoloSession:
    """The YOLO side of one :func:`~necklace.detection.compare.compare` call: checks every neck before any
    training, writes (or finds) the data, trains / resumes / reuses each run and profiles each neck.

    Example (the checks only; ``session.run(neck, seed=0, progress=True, where="[1/4]")`` trains):

        >>> session = YoloSession(CompareConfig(necks=("yolo_pafpn", "bifpn"), base=YoloTrainConfig(epochs=3)))
        >>> session.check()  # every neck builds inside yolov8n, the training arguments are Ultralytics'
        >>> session.base.model_yaml, [n.label for n in session.config.necks]
        ('yolov8n.yaml', ['yolo_pafpn', 'bifpn'])
    """

    def __init__(self, config: CompareConfig) -> None:
        if not isinstance(config.base, YoloTrainConfig):
            raise TypeError(f"YoloSession needs a CompareConfig whose base is a YoloTrainConfig, got {config.base!r}.")
        self.config = config
        self.base: YoloTrainConfig = config.base
        self.ul = _integration()
        # Ultralytics draws a session id from Python's global random when its events module is first imported
        # (8.3: during the first training of a process); importing it now gives every run the same random state
        for name in ("ultralytics.utils.events", "ultralytics.hub.utils"):
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(name)
        self.threads = torch.get_num_threads()
        self._data: Path | None = None
        self._num_train: int | None = None

    # -------------------------------------------------------------------------------------------- checks, data
    def check(self) -> None:
        """Refuse unknown Ultralytics training arguments, a missing data file, and any neck whose model cannot be
        built (options, levels), before anything trains."""
        from ultralytics.utils import DEFAULT_CFG_DICT

        unknown = sorted(set(self.base.train_args) - set(DEFAULT_CFG_DICT))
        if unknown:
            raise ValueError(
                f"compare: {unknown} are not Ultralytics training arguments (--detector-option); known ones include "
                "optimizer, warmup_epochs, mosaic, close_mosaic, cos_lr, weight_decay, amp, patience (see Ultralytics' "
                "default.yaml)."
            )
        data_yaml = DataSpec.parse(self.base.data).data_yaml
        if data_yaml is not None and not Path(data_yaml).is_file():
            raise ValueError(f"compare: Ultralytics data file {data_yaml!r} not found; give yolo:PATH/data.yaml.")
        for neck in self.config.necks:
            try:
                self.ul.build_yolo(self.base.model_yaml, neck.name, levels=self.base.levels, **neck.options)
            except (ValueError, TypeError) as e:
                raise type(e)(f"compare: neck {neck.label!r} in {self.base.detector}: {e}") from e

    def data(self, progress: bool = False) -> Path:
        """The Ultralytics data file: the user's, or the synthetic set written once under ``<output>/data/``."""
        if self._data is None:
            spec = DataSpec.parse(self.base.data)
            if spec.data_yaml is not None:
                self._data = Path(spec.data_yaml).resolve()
            else:
                o = self.base.synthetic
                name = f"synthetic-{o['num_images']}+{o['val_images']}-{self.base.image_size}px-{o['num_classes']}cls"
                root = Path(self.config.output, "data", f"{name}-seed{o['seed']}").resolve()
                if not (root / "data.yaml").is_file():
                    _say(progress, f"writing the synthetic data set once -> {root}")
                self._data = self.ul.synthetic_yolo_dataset(
                    root, o["num_images"], o["val_images"], self.base.image_size, o["num_classes"], o["seed"]
                )
        return self._data

    def _train_images(self) -> int:
        if self._num_train is None:
            from necklace.integrations.ultralytics.evaluate import read_split

            self._num_train = len(read_split(self.data(), "train").images)
        return self._num_train

    # -------------------------------------------------------------------------------------------- runs
    def run(self, neck: NeckChoice, seed: int, progress: bool, where: str) -> RunResult:
        """Train (or reuse / resume) one ``(neck, seed)`` run and COCO-evaluate its final weights."""
        rc: YoloTrainConfig = self.config.run_config(neck, seed)
        out = Path(rc.output).resolve()
        record_path = out / RUN_RECORD
        record = self._record(record_path, rc)
        metrics = _read_metrics(out / METRICS_FILE)
        last = out / "weights" / "last.pt"
        state, _ = _checkpoint_state(last)
        status = "reused" if metrics is not None and state in ("finished", "epochs_done") else "trained"
        if status != "reused":
            metrics = None
            if state in ("finished", "epochs_done", "resumable"):
                status = "resumed"
            _say(progress, f"{where} {neck.label} seed {seed}: {_doing(state)} -> {out}")
            if state in ("missing", "unreadable", "resumable"):
                record = self._train(neck, rc, out, record, resume=state == "resumable", progress=progress)
            elif state == "epochs_done":
                record["ultralytics_metrics"] = None  # interrupted in Ultralytics' final validation
            record["steps"] = rc.epochs * math.ceil(self._train_images() / rc.batch_size)
            from necklace.integrations.ultralytics.evaluate import coco_evaluate

            model = self._load(last)
            with _console(progress):
                metrics = coco_evaluate(
                    model, self.data(), imgsz=rc.image_size, conf=EVAL_CONF, iou=EVAL_IOU, max_det=EVAL_MAX_DET
                )
            _write_text(record_path, json.dumps(record, indent=2) + "\n")
            _write_text(out / METRICS_FILE, json.dumps(metrics.to_dict(), indent=2) + "\n")
        assert metrics is not None
        first, final = _loss_ends(_losses(out))
        ul = record.get("ultralytics_metrics") or {}
        run = RunResult(
            label=neck.label,
            seed=seed,
            output=out,
            metrics=metrics,
            train_time=float(record.get("train_time_s", math.nan)),
            steps=int(record.get("steps", 0)),
            loss_first=first,
            loss_last=final,
            status=status,
            trainer_metrics={k: float(v) for k, v in ul.items()},
        )
        mine = f"Ultralytics mAP50-95 {ul['metrics/mAP50-95(B)']:.3f}, " if "metrics/mAP50-95(B)" in ul else ""
        _say(
            progress,
            f"{where} {neck.label} seed {seed}: {'reused finished run, ' if status == 'reused' else ''}"
            f"AP {metrics.ap:.3f} AP50 {metrics.ap50:.3f} ({mine}COCO eval by necklace), loss {first:.3f} -> "
            f"{final:.3f}, {run.train_time:.0f} s of training",
        )
        return run

    def _record(self, path: Path, rc: YoloTrainConfig) -> dict[str, Any]:
        """The run's record; a run directory of another configuration is an error."""
        now = rc.to_dict()
        if path.is_file():
            try:
                record = json.loads(path.read_text())
                saved = record["config"]
            except (OSError, ValueError, KeyError, TypeError):
                record, saved = None, None
            if isinstance(saved, dict):
                diffs = [
                    f"{k}: {saved.get(k)!r} there, {now[k]!r} now"
                    for k in now
                    if k not in RESUMABLE_YOLO_CHANGES and saved.get(k, now[k]) != now[k]
                ]
                if diffs:
                    raise ValueError(
                        f"{str(path.parent)!r} holds a run of another configuration ({'; '.join(diffs)}); compare "
                        "into another --output directory, or delete that one to start afresh."
                    )
                assert record is not None
                record["config"] = now
                return dict(record)
        return {"config": now, "ultralytics": self.ul.ultralytics_version(), "train_time_s": 0.0}

    def _train(
        self, neck: NeckChoice, rc: YoloTrainConfig, out: Path, record: dict[str, Any], resume: bool, progress: bool
    ) -> dict[str, Any]:
        args = {**rc.ultralytics_args(), "data": str(self.data()), "project": str(out.parent), "name": out.name}
        args["exist_ok"] = True
        out.mkdir(parents=True, exist_ok=True)
        _write_text(out / RUN_RECORD, json.dumps(record, indent=2) + "\n")  # the configuration, before training
        last = out / "weights" / "last.pt"
        if not resume:
            (out / "results.csv").unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            with _console(progress), _sigterm_as_interrupt():
                if resume:
                    yolo = self.ul.NecklaceYOLO(str(last))
                    yolo.train(resume=True, data=args["data"], workers=args["workers"], **_device(args))
                else:
                    yolo = self.ul.build_yolo(rc.model_yaml, neck.name, levels=rc.levels, **neck.options)
                    yolo.train(**args)
        except KeyboardInterrupt:
            record["train_time_s"] = float(record.get("train_time_s", 0.0)) + time.perf_counter() - t0
            _write_text(out / RUN_RECORD, json.dumps(record, indent=2) + "\n")
            state, done = _checkpoint_state(last)
            per_epoch = math.ceil(self._train_images() / rc.batch_size)
            saved = last if state == "resumable" else None
            raise TrainingInterrupted("SIGINT", done * per_epoch, rc.epochs * per_epoch, saved) from None
        finally:
            torch.set_num_threads(self.threads)  # Ultralytics sets the thread count for CPU training
        record["train_time_s"] = float(record.get("train_time_s", 0.0)) + time.perf_counter() - t0
        trainer: Any = yolo.trainer
        record["ultralytics_metrics"] = {
            k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items() if _finite(v)
        }
        return record

    @staticmethod
    def _load(last: Path) -> nn.Module:
        from necklace.integrations.ultralytics.build import load_checkpoint

        model, _ = load_checkpoint(last)
        return model.float().eval()

    def chance_note(self, progress: bool) -> str:
        """What a randomly initialised model of the first neck scores on the evaluation data: the chance level the
        trained runs are to be read against (on small images, boxes covering most of the image match the large
        objects by chance)."""
        from necklace.integrations.ultralytics.evaluate import coco_evaluate, read_split

        neck = self.config.necks[0]
        nc = len(read_split(self.data(), "val").names)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            yolo = self.ul.build_yolo(self.base.model_yaml, neck.name, levels=self.base.levels, nc=nc, **neck.options)
        m = coco_evaluate(
            yolo, self.data(), imgsz=self.base.image_size, conf=EVAL_CONF, iou=EVAL_IOU, max_det=EVAL_MAX_DET
        )
        floor = 100 * self.config.learned_ap50
        text = (
            f"chance level: {self.base.detector} with `{neck.label}` and random weights (untrained) scores AP "
            f"{100 * m.ap:.1f}, AP50 {100 * m.ap50:.1f} on this evaluation data (boxes that cover most of an image "
            f"match its large objects); the learning floor is AP50 {floor:.1f}"
        )
        if m.ap50 >= self.config.learned_ap50:
            text += " (below the chance level: read 'learned' with care)"
        _say(progress, f"{text}.")
        return text

    # -------------------------------------------------------------------------------------------- profile
    def profile(self, run: RunResult, progress: bool) -> NeckProfile:
        """Params, FLOPs and latency of the neck (``model.neck`` on the backbone's maps of a validation image) and
        of the whole detector (backbone, neck, Detect and NMS) at the profile size, batch 1, eval mode, on CPU with
        Ultralytics' CPU thread count (and on CUDA when asked or available)."""
        from necklace.integrations.ultralytics.evaluate import Letterbox, _load_image, read_split

        config = self.config
        model: Any = self._load(Path(run.output) / "weights" / "last.pt")
        size = config.profile_image_size
        first = read_split(self.data(), "val").images[0]
        image = _load_image(first)
        x = Letterbox.fit(int(image.shape[-2]), int(image.shape[-1]), size).image(image)[None]
        feats: list[Tensor] = []
        hook = model.neck_layer.register_forward_pre_hook(lambda m, a: feats.extend(t.clone() for t in a[0]))
        try:
            with torch.no_grad():
                model(x)
        finally:
            hook.remove()
        neck: nn.Module = model.neck
        detector = _WithNms(model)
        from ultralytics.utils import NUM_THREADS

        # CPU latency at the thread count Ultralytics itself runs CPU work with (its select_device sets it for
        # training and prediction: cores - 1, at most 8), which also keeps timings sane on a busy machine
        kw: dict[str, Any] = {"warmup": config.latency_warmup, "repeats": config.latency_repeats}
        kw["threads"] = int(NUM_THREADS)
        neck_cpu = measure_latency(neck, feats, **kw)
        det_cpu = measure_latency(detector, x, **kw)
        neck_gpu = det_gpu = None
        gpu_name = None
        if config.gpu_latency or (config.gpu_latency is None and torch.cuda.is_available()):
            dev = torch.device("cuda")
            model.to(dev)
            neck_gpu = measure_latency(neck, [f.to(dev) for f in feats], **kw)
            det_gpu = measure_latency(detector, x.to(dev), **kw)
            gpu_name = torch.cuda.get_device_name(dev)
            model.to("cpu")
        profile = NeckProfile(
            image_size=size,
            neck_params=count_params(neck),
            neck_gflops=count_flops(neck, feats) / 1e9,
            detector_params=count_params(model),
            detector_gflops=count_flops(model, x) / 1e9,
            neck_cpu=neck_cpu,
            detector_cpu=det_cpu,
            threads=int(NUM_THREADS),
            neck_gpu=neck_gpu,
            detector_gpu=det_gpu,
            gpu_name=gpu_name,
        )
        _say(
            progress,
            f"profile {run.label}: neck {profile.neck_params:,} params, {profile.neck_gflops:.3g} GFLOPs, "
            f"{neck_cpu.median_ms:.2f} ms CPU; detector {det_cpu.median_ms:.1f} ms CPU at {size} px",
        )
        return profile


class _WithNms(nn.Module):
    """A YOLO detection model followed by Ultralytics' NMS at the evaluation settings: the whole detector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        from necklace.integrations.ultralytics.evaluate import non_max_suppression

        out = self.model(x)
        preds = out[0] if isinstance(out, (list, tuple)) else out
        return list(non_max_suppression(preds, EVAL_CONF, EVAL_IOU, multi_label=True, max_det=EVAL_MAX_DET))


def _device(args: dict[str, Any]) -> dict[str, Any]:
    return {"device": args["device"]} if "device" in args else {}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _doing(state: str) -> str:
    return {
        "missing": "training",
        "unreadable": "restarting (its checkpoint was cut short)",
        "resumable": "resuming from its last.pt",
        "finished": "evaluating (training had finished)",
        "epochs_done": "evaluating (every epoch had finished)",
    }[state]
