"""``necklace search``: find the neck for your own data under a latency budget, and prove it beats the hand-made
necks (or say that it does not).

NAS-FPN's searched neck was found on COCO with a ResNet and has to be searched again for other data and models;
this package does that locally, on necklace graphs:

1. **The space** (:mod:`~necklace.detection.search.space`): templates (FPN, PAFPN, BiFPN, NAS-FPN merging cells,
   YOLO PAN) times their knobs (levels N2..N7, width per level, fusion sum / weighted / concat, up- and
   downsampling ops, refine block, repeats), as a typed :class:`Candidate`; opt-in, a free space of merging-cell
   graphs changed by mutation (``free_cells=True``). The hand-made necks (fpn, pafpn, bifpn, yolo_pafpn with
   ``necklace compare``'s defaults, on the same backbone) are always trials too.
2. **Latency first** (:mod:`~necklace.detection.search.latency`): every candidate is deployed
   (``necklace.deploy(neck, maps, runtime=...)``) and timed on the target device before any training; over the
   budget, it is rejected in seconds and recorded.
3. **Cheap, honest fidelity** (:mod:`~necklace.detection.search.fidelity`, :mod:`~necklace.detection.search.study`):
   short trainings of neck + head on cached maps of a frozen backbone, evaluated on held-out training images at
   rungs, weak trials pruned by successive halving (or Hyperband); the study is sized to the wall-clock budget
   after the first (baseline) trial and lives in an Optuna journal in the output folder: run the same command
   again after an interruption and it continues, with the same trials and the same result.
4. **A verdict, not a leaderboard** (:mod:`~necklace.detection.search.verdict`): the best searched necks and the
   best hand-made neck are retrained end to end at the full recipe over several seeds through
   :func:`necklace.detection.compare.compare`; a searched neck is declared the winner only when it beats the
   hand-made one by more than the seed noise.

Outputs in ``output``: ``report.md`` (verdict first), ``trials.md`` / ``trials.csv`` (every trial: its neck,
latency, metric, pruned at which rung or rejected), ``search.png`` (metric vs latency, Pareto front, budget line),
``winner.yaml`` (the graph of the neck to use: ``necklace.GraphNeck.from_file("winner.yaml")``),
``results.json``, ``verdict/`` (compare's runs and report).

A searched neck is the registered neck ``"searched"`` with its candidate's options (plain data), so it trains,
compares, checkpoints and reloads like any neck: ``build_neck("searched", specs, **candidate.to_options())``,
``TrainConfig(neck="searched", neck_options=...)``, ``NeckChoice("searched", options, label=...)``. The search
registers it; another process that builds one by name (e.g. ``load_model`` of a verdict run's checkpoint) calls
:func:`register_searched_neck` first.

**CPU-sized default** (:class:`SearchConfig` ``()``; about 30 minutes on 2 cores): ``tiny_shapes`` data (256
synthetic 128 px images of COCO-small objects, 64 for validation), the tiny backbone with maps from stride 4,
``necklace compare``'s CPU Faster R-CNN, budget ``3x`` the latency of the reference neck (fpn, P3-P6) on the
``torch`` runtime, a 300-step warm-up for the frozen backbone, rungs at 60 / 180 / 540 steps, the two best
searched necks and the best hand-made one retrained for 500 steps over seeds 0, 1, 2::

    necklace search --time-budget 30m

**Inside an Ultralytics YOLO detector** (``pip install 'necklace[search,ultralytics]'``;
:mod:`~necklace.detection.search.yolo`): ``SearchConfig(base=CPU_YOLO_BASE)`` or ``necklace search --detector
yolov8n`` (any YOLOv8 / YOLO11 size; ``--levels 2,5`` adds P2): candidates output the detector's levels and are
timed on its backbone's maps (or, ``--latency-scope detector``, as the whole YOLO model); the short trainings are a
proxy (necklace's torchvision head on cached maps of the YOLO backbone, frozen after one Ultralytics warm-up training
of the stock model); only the verdict trains inside YOLO, with Ultralytics' trainer, Detect head and loss::

    necklace search --detector yolov8n --time-budget 1h

**GPU-sized settings** (a real data set, a pretrained backbone: ``pip install 'necklace[search]'``)::

    necklace search --data coco:train2017,instances_train2017.json --val-data coco:val2017,instances_val2017.json \\
        --detector retinanet --backbone resnet50 --pretrained --backbone-option levels=[2,5] \\
        --image-size 640 --batch-size 16 --steps 90000 --device cuda --runtime auto \\
        --latency-budget 4ms --warmup-steps 0 --fidelity-images 20000 --rung-steps 500 \\
        --verdict-top 2 --verdict-seeds 0,1,2 --time-budget 24h --output runs/search-coco

(cached maps of P2 at 640 px are large: about 11 MB per image for a ResNet-50; lower ``--fidelity-images`` or
drop level 2 from the backbone when memory is short.)

Example:
    >>> c = Candidate("fpn", levels=(2, 6), width=32)
    >>> c.to_options()["levels"], c.finest_stride
    ([2, 6], 4)
"""

from necklace.detection.search.config import (
    CPU_BASE,
    CPU_YOLO_BASE,
    PRUNERS,
    YOLO_PROXY,
    YOLO_WARMUP_EPOCHS,
    SearchConfig,
    parse_duration,
)
from necklace.detection.search.data import PRESETS, tiny_shapes, tiny_shapes_yolo
from necklace.detection.search.fidelity import (
    CachedBackbone,
    FeatureCache,
    RungResult,
    ShortTraining,
    UniformWidth,
    train_short,
    uniform_width,
)
from necklace.detection.search.latency import LATENCY_SCOPES, LatencyBudget, LatencyProbe, LatencyResult
from necklace.detection.search.pipeline import DEFAULT_TRIALS, search
from necklace.detection.search.report import plot_search, trials_csv, trials_table
from necklace.detection.search.result import SearchResult, report_markdown
from necklace.detection.search.space import (
    DEFAULT_HANDMADE,
    TEMPLATES,
    Candidate,
    SearchSpace,
    handmade_choices,
    searched_neck,
)
from necklace.detection.search.trials import TrialRecord, records_from_trials
from necklace.detection.search.verdict import (
    Verdict,
    decide,
    decide_from_stats,
    finalist_label,
    finalists,
    verdict_config,
)
from necklace.detection.search.yolo import YoloBackbone
from necklace.necks.cells import CELL_OPS, Cell, mutate_cells, nasfpn_cells, panet_cells

__all__ = [
    "CELL_OPS",
    "CPU_BASE",
    "CPU_YOLO_BASE",
    "DEFAULT_HANDMADE",
    "DEFAULT_TRIALS",
    "LATENCY_SCOPES",
    "PRESETS",
    "PRUNERS",
    "TEMPLATES",
    "YOLO_PROXY",
    "YOLO_WARMUP_EPOCHS",
    "CachedBackbone",
    "Candidate",
    "Cell",
    "FeatureCache",
    "LatencyBudget",
    "LatencyProbe",
    "LatencyResult",
    "RungResult",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "ShortTraining",
    "TrialRecord",
    "UniformWidth",
    "Verdict",
    "YoloBackbone",
    "decide",
    "decide_from_stats",
    "finalist_label",
    "finalists",
    "handmade_choices",
    "mutate_cells",
    "nasfpn_cells",
    "panet_cells",
    "parse_duration",
    "plot_search",
    "records_from_trials",
    "report_markdown",
    "search",
    "searched_neck",
    "tiny_shapes",
    "tiny_shapes_yolo",
    "train_short",
    "trials_csv",
    "trials_table",
    "uniform_width",
    "verdict_config",
]
