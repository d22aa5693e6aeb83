"""Train a torchvision detector with a necklace neck: one process (CPU/GPU) or many under ``torchrun`` (DDP).

:class:`TrainConfig` says what to train and how (frozen; round-trips through dicts and YAML/JSON files);
:func:`train` runs it and returns a :class:`TrainResult`. What it does:

- **Reproducible.** The model is initialised from ``seed``; the data order comes from a
  ``DistributedSampler`` seeded with ``seed`` (``set_epoch`` every epoch, one shard per process), the data
  loader has its own generator, and each process's training RNG stream is ``seed + rank``. On CPU two runs of
  the same config give bit-identical weights.
- **Checkpoints** (``<output>/checkpoint.pt``) hold the model, optimizer, LR scheduler, AMP grad scaler, step,
  epoch, every process's RNG states and the loss history. They are written atomically (temporary file +
  ``os.replace``, rank 0 only) every ``checkpoint_every`` steps, at the end, and when a SIGINT/SIGTERM arrives
  (the step in flight finishes, the checkpoint is written, then :class:`TrainingInterrupted` is raised).
- **Resume** (``train(config, resume=True)`` or a checkpoint path) restores all of that and continues the same
  step sequence, skipping the batches of a partly consumed epoch: on CPU an interrupted and resumed run ends
  with exactly the weights and loss history of an uninterrupted one.
- **DDP** when launched by ``torchrun`` (``WORLD_SIZE`` > 1): ``gloo`` on CPU, ``nccl`` on CUDA, one GPU per
  process (``LOCAL_RANK``). ``batch_size`` is per process. Evaluation gathers predictions on rank 0. DDP runs
  with ``find_unused_parameters=True`` (necks with branches a detector leaves unused still train; torch notes
  once per process when none are unused). Across machines, ``output`` must be a shared directory to resume.
- **AMP** (float16 autocast + ``GradScaler``) on CUDA unless ``amp=False``; cosine LR schedule with linear
  warm-up; optional gradient clipping; SGD (momentum) or AdamW, no weight decay on norms and biases.
- **Logs** on rank 0: ``log.csv`` (a row every ``log_every`` steps and at the end: step, epoch, lr, each loss
  and total as means over the steps since the previous row, seconds of training), TensorBoard events in
  ``tensorboard/`` when ``tensorboard`` is installed, a tqdm bar (plain lines without tqdm), ``config.yaml``
  and, with ``eval=True``, ``metrics.json``.

Example:
    >>> import tempfile
    >>> cfg = TrainConfig(detector="fcos", backbone_options={"width": 4}, neck_options={"width": 16},
    ...                   detector_options={"head_convs": 1}, data_options={"num_images": 4}, image_size=64,
    ...                   batch_size=2, steps=2, output=tempfile.mkdtemp(), tensorboard=False)
    >>> result = train(cfg, progress=False)
    >>> result.steps, len(result.losses), result.checkpoint.name
    (2, 2, 'checkpoint.pt')
"""

from necklace.detection.train.build import build_dataset, build_datasets, build_model, load_model
from necklace.detection.train.config import (
    CHECKPOINT_NAME,
    DATA_KINDS,
    OPTIMIZERS,
    RESUMABLE_CHANGES,
    SCHEDULES,
    DataSpec,
    TrainConfig,
)
from necklace.detection.train.loop import train
from necklace.detection.train.optim import lr_factor
from necklace.detection.train.results import TrainingInterrupted, TrainResult

__all__ = [
    "CHECKPOINT_NAME",
    "DATA_KINDS",
    "OPTIMIZERS",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "DataSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "build_dataset",
    "build_datasets",
    "build_model",
    "load_model",
    "lr_factor",
    "train",
]
