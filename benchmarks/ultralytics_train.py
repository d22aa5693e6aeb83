"""Stock Ultralytics YOLOv8n vs the same detector with necklace's ``yolo_pafpn`` neck carrying the converted
weights (``necklace.integrations.ultralytics.from_ultralytics``): training steps interleaved in one process.

One step is what Ultralytics' trainer does per batch (``BaseTrainer._do_train`` + ``optimizer_step``):
``model.loss(batch)`` (the model's forward and ``v8DetectionLoss``), backward of its sum, gradient clipping to
norm 10, an SGD step (lr 0.01, momentum 0.937, Nesterov, as Ultralytics' SGD), ``zero_grad`` and the EMA update
(Ultralytics' ``ModelEMA``). Both models start from the same weights and see the same batches in the same order
(each keeps its own step counter); the two step callables run interleaved (``necklace.bench.interleaved``: each
round runs both, the first one alternating). Reported:

- time per step: medians and the median over rounds of ``t_necklace / t_stock`` (target <= 1.02);
- peak memory of one step: new tensor bytes held at once in torch's CPU allocator (``necklace.bench.
  peak_memory_bytes``, profiler allocation events), ``necklace / stock`` (target <= 1.02);
- the loss curves: every step's (box, cls, dfl) losses of both and their largest difference, and the largest
  weight difference after the last step (YOLOv8n: equal bit for bit; YOLO11n's C3k2 / C2PSA blocks read some
  maps three times, so autograd sums those gradients in another order: equal to float rounding).

Data: necklace's synthetic shapes (``necklace.detection.data.SyntheticShapes``, 3 classes) at ``--imgsz``, a
pool of ``--pool`` batches of ``--batch`` images used in turn. Nothing is downloaded (the model is built from the
YAML Ultralytics ships).

Run (from the repository root)::

    .venv/bin/python benchmarks/ultralytics_train.py --repeats 30 --warmup 3 --batch 8 --imgsz 320

Writes ``<out>/ultralytics_train.json`` and ``<out>/ultralytics_train.md`` (``--out`` defaults to
``benchmarks/results/ultralytics_train``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # type: ignore[import-not-found]
else:  # imported as benchmarks.ultralytics_train
    from benchmarks import common  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 3


def make_batches(n: int, batch: int, imgsz: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """``n`` Ultralytics training batches (``img`` in [0, 1], ``batch_idx``, ``cls``, normalised ``bboxes``
    xywh) of necklace's synthetic shapes."""
    from necklace.detection.data import SyntheticShapes

    ds = SyntheticShapes(n * batch, image_size=(imgsz, imgsz), num_classes=NUM_CLASSES, seed=seed)
    out = []
    for b in range(n):
        imgs, idx, cls, boxes = [], [], [], []
        for j in range(batch):
            image, target = ds[b * batch + j]
            imgs.append(image)
            xyxy = target["boxes"] / imgsz
            xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
            boxes.append(xywh)
            cls.append((target["labels"] - 1).float().unsqueeze(1))
            idx.append(torch.full((len(xywh),), float(j)))
        out.append(
            {"img": torch.stack(imgs), "batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}
        )
    return out


class Trainer:
    """One model's training steps as Ultralytics runs them; ``step()`` takes the next batch of the pool."""

    def __init__(self, model: nn.Module, batches: list[dict[str, Tensor]]) -> None:
        from ultralytics.cfg import get_cfg
        from ultralytics.utils.torch_utils import ModelEMA

        self.model = model.train()
        self.model.args = get_cfg()  # type: ignore[assignment]  # the loss gains (box 7.5, cls 0.5, dfl 1.5)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=0.01, momentum=0.937, nesterov=True)
        self.ema = ModelEMA(model)
        self.batches = batches
        self.i = 0
        self.losses: list[list[float]] = []
        self.cpu_s: list[float] = []  #: process CPU time of each step (all threads)

    def step(self) -> None:
        start = time.process_time()
        self._step()
        self.cpu_s.append(time.process_time() - start)

    def _step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss, items = self.model.loss(batch)  # type: ignore[operator]
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(self.params, max_norm=10.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.losses.append([float(v) for v in items.values()] if isinstance(items, dict) else items.tolist())


def build(model_yaml: str) -> tuple[nn.Module, nn.Module, str]:
    """The stock model (random weights, 3 classes) and its necklace twin with the converted weights."""
    from ultralytics.nn.tasks import DetectionModel

    from necklace.integrations.ultralytics import from_ultralytics

    stock = DetectionModel(model_yaml, nc=NUM_CLASSES, verbose=False)
    ours = from_ultralytics(stock).model
    return stock, ours, ours.neck_layer.type


def _max_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> tuple[float, float]:
    diffs = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    rel = [abs(x - y) / max(abs(x), 1e-12) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return max(diffs, default=0.0), max(rel, default=0.0)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from necklace.bench import interleaved, peak_memory_bytes, ratio_stats, stats_ms

    torch.manual_seed(args.seed)
    stock, ours, neck = build(args.model)
    batches = make_batches(args.pool, args.batch, args.imgsz, seed=args.seed)
    trainers = {"stock": Trainer(stock, batches), "necklace": Trainer(ours, batches)}
    fns = {name: t.step for name, t in trainers.items()}
    malloc = common.apply_malloc(args.malloc)
    size = f"batch {args.batch} x {args.imgsz}^2"
    log(f"{args.model}: stock vs {neck} (converted weights), {size}, {args.threads} threads")
    with common.threads(args.threads):
        faults: dict[str, int] = {}
        times = interleaved(
            fns,
            repeats=args.repeats,
            warmup=args.warmup,
            faults=faults,
            progress=lambda done, total: log(f"  {done}/{total} rounds") if done and done % 10 == 0 else None,
        )
        memory = {name: peak_memory_bytes(fn) for name, fn in fns.items()}  # one more step each, same batch index
    ratio = ratio_stats(times["necklace"], times["stock"])
    timed = slice(args.warmup, args.warmup + args.repeats)  # the timed rounds' steps (warm-up first)
    cpu = {name: t.cpu_s[timed] for name, t in trainers.items()}
    cpu_ratio = ratio_stats(cpu["necklace"], cpu["stock"])
    abs_diff, rel_diff = _max_diff(trainers["stock"].losses, trainers["necklace"].losses)
    sa, sb = trainers["stock"].model.state_dict(), trainers["necklace"].model.state_dict()
    nb = len(stock.yaml["backbone"])  # type: ignore[index,arg-type]
    backbone = [k for k in sa if int(k.split(".")[1]) < nb and sa[k].is_floating_point()]
    weight_diff = max(float((sa[k] - sb[k]).abs().max()) for k in backbone)
    steps = len(trainers["stock"].losses)
    mem_ratio = memory["necklace"]["peak_bytes"] / memory["stock"]["peak_bytes"]
    result = {
        "env": common.environment(args.threads),
        "settings": {
            "model": args.model,
            "neck": neck,
            "batch": args.batch,
            "imgsz": args.imgsz,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "pool": args.pool,
            "seed": args.seed,
            "threads": args.threads,
            "malloc": malloc,
            "step": "model.loss(batch) + backward + clip_grad_norm_(10) + SGD(0.01, 0.937, nesterov) + EMA",
        },
        "time_per_step": {
            "stock": stats_ms(times["stock"]),
            "necklace": stats_ms(times["necklace"]),
            "ratio_necklace_over_stock": ratio,
            "minor_faults": faults,
            "cpu_time": {
                "note": "process CPU time of the same steps (all threads): less sensitive to other processes' load",
                "stock": stats_ms(cpu["stock"]),
                "necklace": stats_ms(cpu["necklace"]),
                "ratio_necklace_over_stock": cpu_ratio,
            },
        },
        "peak_memory": {**memory, "ratio_necklace_over_stock": mem_ratio},
        "loss_curves": {
            "steps": steps,
            "names": ["box", "cls", "dfl"],
            "stock": trainers["stock"].losses,
            "necklace": trainers["necklace"].losses,
            "max_abs_diff": abs_diff,
            "max_rel_diff": rel_diff,
            "equal_bit_for_bit": trainers["stock"].losses == trainers["necklace"].losses,
            "backbone_weight_max_abs_diff_after": weight_diff,
        },
        "targets": {"time_ratio_max": 1.02, "memory_ratio_max": 1.02},
        "met": {"time": ratio["median"] <= 1.02, "memory": mem_ratio <= 1.02},
    }
    log(
        f"time/step: stock {result['time_per_step']['stock']['median_ms']:.1f} ms, necklace "
        f"{result['time_per_step']['necklace']['median_ms']:.1f} ms, ratio {ratio['median']:.3f} "
        f"[{ratio['p25']:.3f}, {ratio['p75']:.3f}] (CPU time {cpu_ratio['median']:.3f}); "
        f"peak memory ratio {mem_ratio:.4f}; "
        f"losses over {steps} steps: max abs diff {abs_diff:.3g} (rel {rel_diff:.3g}), weights {weight_diff:.3g}"
    )
    return result


def markdown(r: dict[str, Any]) -> str:
    """The results as a Markdown section."""
    s, t, m, c = r["settings"], r["time_per_step"], r["peak_memory"], r["loss_curves"]
    env = r["env"]
    ratio = t["ratio_necklace_over_stock"]
    first, last = c["stock"][0], c["stock"][-1]
    lines = [
        f"## Ultralytics training step: {s['model']} stock neck vs necklace `{s['neck'].split('.')[-1]}` "
        "(converted weights)",
        "",
        f"{env['date_utc']}, {env['cpu']['model']}, {s['threads']} threads (load average at start "
        f"{env['load_avg_1_5_15']}), torch {env['versions'].get('torch')}, "
        f"ultralytics {env['versions'].get('ultralytics')}; batch {s['batch']} x {s['imgsz']}x{s['imgsz']}, "
        f"{s['repeats']} interleaved rounds after {s['warmup']} warm-up rounds; step = {s['step']}.",
        "",
        "| | stock | necklace | necklace / stock | target |",
        "|---|---:|---:|---:|---:|",
        f"| time per step, median (ms) | {t['stock']['median_ms']:.1f} | {t['necklace']['median_ms']:.1f} | "
        f"{ratio['median']:.3f} (p25 {ratio['p25']:.3f}, p75 {ratio['p75']:.3f}) | <= 1.02 |",
        f"| time per step, mean / min (ms) | {t['stock']['mean_ms']:.1f} / {t['stock']['min_ms']:.1f} | "
        f"{t['necklace']['mean_ms']:.1f} / {t['necklace']['min_ms']:.1f} | "
        f"{t['necklace']['mean_ms'] / t['stock']['mean_ms']:.3f} / "
        f"{t['necklace']['min_ms'] / t['stock']['min_ms']:.3f} | |",
        f"| CPU time per step, median (ms) | {t['cpu_time']['stock']['median_ms']:.1f} | "
        f"{t['cpu_time']['necklace']['median_ms']:.1f} | {t['cpu_time']['ratio_necklace_over_stock']['median']:.3f} "
        f"(p25 {t['cpu_time']['ratio_necklace_over_stock']['p25']:.3f}, "
        f"p75 {t['cpu_time']['ratio_necklace_over_stock']['p75']:.3f}) | |",
        f"| peak memory of a step (MB) | {m['stock']['peak_bytes'] / 1e6:.1f} | "
        f"{m['necklace']['peak_bytes'] / 1e6:.1f} | {m['ratio_necklace_over_stock']:.4f} | <= 1.02 |",
        "",
        f"Loss curves over {c['steps']} steps (box, cls, dfl; stock step 1 {[round(v, 4) for v in first]}, "
        f"step {c['steps']} {[round(v, 4) for v in last]}): equal bit for bit: {c['equal_bit_for_bit']}; "
        f"max abs difference {c['max_abs_diff']:.3g} (relative {c['max_rel_diff']:.3g}); largest backbone weight "
        f"difference after the last step {c['backbone_weight_max_abs_diff_after']:.3g}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model YAML (yolov8n.yaml, yolo11n.yaml)")
    ap.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    ap.add_argument("--imgsz", type=int, default=320, help="square image size (default 320)")
    ap.add_argument("--repeats", type=int, default=30, help="timed interleaved rounds (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--pool", type=int, default=4, help="distinct batches used in turn (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "ultralytics_train"), help="output folder")
    common.add_malloc_arg(ap)
    args = ap.parse_args(argv)
    for key in ("batch", "imgsz", "repeats", "pool", "threads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be >= 1")
    if args.imgsz % 32:
        ap.error(f"--imgsz must be a multiple of 32 (YOLOv8's largest stride), got {args.imgsz}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    common.atomic_write_json(out / "ultralytics_train.json", result)
    common.atomic_write_text(out / "ultralytics_train.md", markdown(result))
    print(f"wrote {out / 'ultralytics_train.json'} and {out / 'ultralytics_train.md'}")
    ok = math.isfinite(result["time_per_step"]["ratio_necklace_over_stock"]["median"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
