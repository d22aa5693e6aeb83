"""Compare necks on one detection task: same backbone, head, data, schedule and seeds; train, evaluate, profile.

:class:`CompareConfig` says which necks (each with its own options) and what they share (a base
:class:`~necklace.detection.train.TrainConfig`, the seeds); :func:`compare` runs every ``(neck, seed)`` pair with
:func:`~necklace.detection.train.train` (COCO evaluation on the validation data), profiles every neck once (params
and GFLOPs of the neck and of the whole detector, CPU latency of both, GPU latency when CUDA is there) and writes
into ``config.output``:

- ``runs/<neck>/seed<k>/``: each training run (checkpoint, ``log.csv``, ``metrics.json``);
- ``results.json``: every number (per run, per neck: mean, std, min, max over seeds; profile; verdict);
- ``report.md``: the table, one verdict line per neck, how it was run and how long it took;
- ``ap_by_size.png`` (AP / AP_small / AP_medium / AP_large per neck, error bars = seed std, dots = seeds) and
  ``ap_vs_latency.png`` (mean AP against neck and detector latency, the Pareto front marked); needs matplotlib.

**Resumable.** A finished run (complete checkpoint + ``metrics.json``) is reused, an interrupted one (Ctrl-C,
SIGTERM, a crash) is resumed from its checkpoint, so re-running the same command after an interruption loses at
most the steps since the last checkpoint. A run directory trained with a different config is an error; an output
directory another live ``compare`` is writing is refused (:class:`~necklace.detection.rundir.RunLock`); every
neck's options are checked by building its detector before the first run trains.

**Noise.** Seeds change the model initialisation and the data order (the data set itself stays the same), so the
spread over seeds is the training noise a user would see. Each neck is compared with the best one (highest mean of
``config.metric``, AP by default) by :func:`significance`: with 3+ seeds per neck, Welch's t-test (two-sided,
5 %); with 2 seeds, the heuristic ``|difference of means| > 2 x sqrt(std_a^2 + std_b^2)`` (std over seeds); with one
seed there is no spread and no verdict, and when a neck's values are identical over its seeds (often all 0) its
noise is unknown, not zero: no verdict either. The rule used is written into the report.

**Learning.** Only runs that learned can be ranked: a neck whose runs do not all reach
``config.learned_ap50`` (AP50 0.05, i.e. 5 on the report's x 100 scale; an untrained detector scores about 0) is
not ranked, and when no neck learned the report says that no ranking is possible and what to change (more steps,
larger images, a pretrained backbone) instead of calling noise around zero a difference
(:func:`~necklace.detection.compare.verdict.judge`).

Example:
    >>> cfg = CompareConfig(necks=("fpn", "pafpn"), seeds=(0, 1))
    >>> [n.label for n in cfg.necks], cfg.run_dir(cfg.necks[1], 1).as_posix()
    (['fpn', 'pafpn'], 'runs/compare/runs/pafpn/seed1')
    >>> cfg.run_config(cfg.necks[1], 1).neck, cfg.run_config(cfg.necks[1], 1).seed
    ('pafpn', 1)
"""

from necklace.detection.compare.config import (
    DEFAULT_BASE,
    DEFAULT_NECKS,
    METRICS,
    CompareConfig,
    NeckChoice,
    default_neck_options,
)
from necklace.detection.compare.plots import plot_ap_by_size, plot_ap_vs_latency
from necklace.detection.compare.results import CompareResult, NeckProfile, NeckResult, RunResult
from necklace.detection.compare.run import compare
from necklace.detection.compare.stats import (
    NO_VERDICT_TEXT,
    RULE_TEXT,
    Significance,
    Stat,
    pareto_front,
    significance,
    welch_t_test,
)
from necklace.detection.compare.verdict import judge, verdict_lines
from necklace.detection.compare.yolo_config import (
    DEFAULT_YOLO_BASE,
    YOLO_DETECTORS,
    YoloTrainConfig,
    default_yolo_necks,
    is_yolo_detector,
    yolo_neck_options,
)

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_NECKS",
    "DEFAULT_YOLO_BASE",
    "METRICS",
    "NO_VERDICT_TEXT",
    "RULE_TEXT",
    "YOLO_DETECTORS",
    "CompareConfig",
    "CompareResult",
    "NeckChoice",
    "NeckProfile",
    "NeckResult",
    "RunResult",
    "Significance",
    "Stat",
    "YoloTrainConfig",
    "compare",
    "default_neck_options",
    "default_yolo_necks",
    "is_yolo_detector",
    "judge",
    "pareto_front",
    "plot_ap_by_size",
    "plot_ap_vs_latency",
    "significance",
    "verdict_lines",
    "welch_t_test",
    "yolo_neck_options",
]
