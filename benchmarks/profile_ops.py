"""Where the time goes: torch.profiler op breakdown of necklace's neck vs the peer's, same config and weights.

Uses the configs of ``vs_peers.py`` (same builders, same converted weights). For each pair it profiles
``--iters`` eval forwards (after ``--warmup``) of each neck separately and prints, per forward:

- wall time (measured around the profiled loop, so it includes the profiler's own overhead),
- the number of ATen ops dispatched (all, and top-level: those not called from inside another ATen op),
- the summed self CPU time of the top-level ATen ops, and the rest of the wall time ("outside ATen":
  Python, module calls, dispatcher, profiler),
- the top ``--top`` ops by self CPU time (``key_averages`` table).

Run::

    .venv/bin/python benchmarks/profile_ops.py --configs bifpn_d0,yolov8n --threads 2
    .venv/bin/python benchmarks/profile_ops.py --configs yolov8n --train   # forward + backward instead

Writes ``<out>/profile_ops.txt`` (the printed report) and ``<out>/profile_ops.json`` (the summaries).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # type: ignore[import-not-found]
    import vs_peers  # type: ignore[import-not-found]
else:
    from benchmarks import common, vs_peers  # type: ignore[no-redef]

from necklace.bench import random_features

HERE = Path(__file__).resolve().parent


def _is_aten(name: str) -> bool:
    return name.startswith("aten::")


def profile_callable(fn: Callable[[], object], iters: int, warmup: int, top: int) -> tuple[dict[str, Any], str]:
    """Profile ``iters`` calls of ``fn``; returns (per-call summary, key_averages table text)."""
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        wall = time.perf_counter() - start
    events = prof.events()
    aten = [e for e in events if _is_aten(e.name)]

    def top_level(e: Any) -> bool:
        p = e.cpu_parent
        while p is not None:
            if _is_aten(p.name):
                return False
            p = p.cpu_parent
        return True

    tops = [e for e in aten if top_level(e)]
    top_cpu_us = sum(e.cpu_time_total for e in tops)  # inclusive time of top-level ops = all ATen work
    counts: dict[str, int] = {}
    for e in tops:
        counts[e.name] = counts.get(e.name, 0) + 1
    summary = {
        "wall_ms_per_call": wall * 1e3 / iters,
        "aten_ops_per_call": len(aten) / iters,
        "top_level_aten_ops_per_call": len(tops) / iters,
        "aten_ms_per_call": top_cpu_us / 1e3 / iters,
        "outside_aten_ms_per_call": wall * 1e3 / iters - top_cpu_us / 1e3 / iters,
        "top_level_op_counts_per_call": {
            k: v / iters for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v / iters >= 1
        },
    }
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
    return summary, table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="bifpn_d0,yolov8n", help=f"comma list of {list(vs_peers.CONFIGS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="profiled calls per neck (default 10)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=15, help="rows of the op table (default 15)")
    ap.add_argument("--train", action="store_true", help="profile train-mode forward + backward instead")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for profile_ops.txt/.json ('' = none)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in vs_peers.CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(vs_peers.CONFIGS)}")

    report: list[str] = []

    def out(msg: str = "") -> None:
        print(msg, flush=True)
        report.append(msg)

    results: dict[str, Any] = {"env": common.environment(args.threads), "settings": vars(args), "configs": {}}
    mode = "train forward+backward" if args.train else "eval forward (no_grad)"
    out(f"# op profile, {mode}, {args.threads} threads, {args.iters} calls per neck")
    out(f"{results['env']['date_utc']} | {results['env']['cpu']['model']} | load {results['env']['load_avg_1_5_15']}")
    with common.threads(args.threads):
        for name in names:
            builder, size, _ = vs_peers.CONFIGS[name]
            case = builder(size)
            feats = random_features(case.in_specs, case.image_size, batch=1, seed=0)
            if args.train:
                feats = [f.requires_grad_(True) for f in feats]
            results["configs"][name] = {}
            for pair in case.pairs:
                out(f"\n## {name} ({size[0]}x{size[1]}): necklace vs {pair.peer}")
                if pair.skipped:
                    out(f"skipped: {pair.skipped}")
                    continue
                assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
                c, m = pair.call, pair.peer_module

                def peer_call(f: list[torch.Tensor], c: Any = c, m: Any = m) -> list[torch.Tensor]:
                    return c(m, f)

                if args.train:
                    fns = {
                        "necklace": vs_peers._train_step(pair.necklace.train(), None, feats),
                        "peer": vs_peers._train_step(m.train(), peer_call, feats),
                    }
                else:
                    fns = {
                        "necklace": vs_peers._eval_call(pair.necklace, None, feats),
                        "peer": vs_peers._eval_call(m, peer_call, feats),
                    }
                pair_result = {}
                for who, fn in fns.items():
                    summary, table = profile_callable(fn, args.iters, args.warmup, args.top)
                    pair_result[who] = summary
                    out(
                        f"\n### {who}: {summary['wall_ms_per_call']:.2f} ms/call wall (profiled), "
                        f"{summary['aten_ops_per_call']:.0f} ATen ops/call "
                        f"({summary['top_level_aten_ops_per_call']:.0f} top-level), "
                        f"ATen {summary['aten_ms_per_call']:.2f} ms, outside ATen "
                        f"{summary['outside_aten_ms_per_call']:.2f} ms"
                    )
                    counts = ", ".join(f"{k} {v:g}" for k, v in summary["top_level_op_counts_per_call"].items())
                    out(f"top-level ops per call: {counts}")
                    out(table)
                results["configs"][name][pair.peer] = pair_result
    if args.out:
        common.atomic_write_text(Path(args.out) / "profile_ops.txt", "\n".join(report) + "\n")
        common.atomic_write_json(Path(args.out) / "profile_ops.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
