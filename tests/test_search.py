"""`necklace search`: the space (candidates, templates, merging cells, the `searched` neck), latency budgets,
the cached-feature backbone, the verdict's noise rule, and tiny end-to-end searches: latency rejection, pruning,
resume after an interruption (same trials, same result), the winner's YAML, the command line."""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.helpers import assert_search_resumes

import necklace
from necklace import FeatureSpec, GraphNeck
from necklace.bench import LatencyStats
from necklace.cli.search import add_search_parser, run, search_config_from_args
from necklace.detection import TinyBackbone
from necklace.detection.compare import (
    METRICS,
    CompareConfig,
    CompareResult,
    NeckChoice,
    NeckProfile,
    NeckResult,
    RunResult,
    Stat,
)
from necklace.detection.evaluate import CocoMetrics
from necklace.detection.search import (
    CPU_BASE,
    CachedBackbone,
    Candidate,
    Cell,
    LatencyBudget,
    LatencyProbe,
    SearchConfig,
    SearchSpace,
    TrialRecord,
    decide,
    decide_from_stats,
    finalist_label,
    finalists,
    handmade_choices,
    mutate_cells,
    nasfpn_cells,
    panet_cells,
    parse_duration,
)

SPECS = (FeatureSpec(8, 4), FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


# ------------------------------------------------------------------------------------------------ the space
@pytest.mark.parametrize("template", ["fpn", "pafpn", "bifpn", "nasfpn", "yolo_pan", "cells"])
def test_every_template_builds_a_neck_with_its_levels(template: str) -> None:
    lo, hi = (2, 6)
    cells = panet_cells(lo, hi) if template == "cells" else ()
    fusion = "concat" if template == "yolo_pan" else "sum"
    c = Candidate(template, (lo, hi), width=16, fusion=fusion, block="csp", repeats=2, cells=cells)
    neck = necklace.build_neck("searched", SPECS, **c.to_options()).eval()
    feats = [torch.randn(1, s.channels, 80 // s.stride, 96 // s.stride) for s in SPECS]
    outs = neck(feats)
    assert [s.stride for s in neck.out_specs] == [4, 8, 16, 32, 64]
    assert [tuple(o.shape[1:]) for o in outs][:2] == [(16, 20, 24), (16, 10, 12)]
    assert Candidate.from_options(c.to_options()) == c


@pytest.mark.parametrize("specs", [SPECS, SPECS[1:], SPECS[3:]])
def test_the_searched_neck_builds_on_its_defaults(specs: tuple[FeatureSpec, ...]) -> None:
    neck = necklace.build_neck("searched", specs)
    lo, hi = specs[0].level, min(specs[-1].level + 1, 7)
    assert [s.stride for s in neck.out_specs] == [2**lv for lv in range(lo, hi + 1)]


def test_per_level_widths_reach_the_outputs() -> None:
    c = Candidate("pafpn", (2, 5), width=(8, 16, 16, 24))
    assert [s.channels for s in c.graph(SPECS).out_specs] == [8, 16, 16, 24]
    assert c.widths == {2: 8, 3: 16, 4: 16, 5: 24}


def test_random_draws_from_the_whole_space_all_build() -> None:
    space = SearchSpace.for_backbone(SPECS, free_cells=True, uniform_width=False)
    rng = random.Random(0)
    templates = set()
    for _ in range(40):
        c = space.suggest(lambda name, choices: rng.choice(list(choices)))
        g = c.graph(SPECS)
        assert [s.level for s in g.out_specs] == list(range(c.levels[0], c.levels[1] + 1))
        templates.add(c.template)
    assert templates == {"fpn", "pafpn", "bifpn", "nasfpn", "yolo_pan", "cells"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"template": "unet"}, ["'unet'", "fpn"]),
        ({"template": "fpn", "levels": (5, 3)}, ["(5, 3)", "lo < hi"]),
        ({"template": "fpn", "levels": (2, 4), "width": [8, 8]}, ["[8, 8]", "3 ints"]),
        ({"template": "nasfpn", "levels": (3, 6)}, ["five levels", "(3, 7)"]),
        ({"template": "fpn", "fusion": "max"}, ["'max'", "weighted"]),
        ({"template": "fpn", "cells": [[0, 1, 3]]}, ["cells", "'cells' template"]),
    ],
)
def test_bad_candidates_say_what_was_given_and_the_fix(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        Candidate(**kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_level_the_backbone_lacks_is_refused_with_the_levels_it_has() -> None:
    with pytest.raises(ValueError, match=r"P2 \(stride 4\).*levels \[3, 4, 5\]"):
        Candidate("fpn", (2, 6)).graph(SPECS[1:])


def test_mutated_cells_stay_valid_and_are_seeded() -> None:
    parent = nasfpn_cells(2, 6)
    for seed in range(30):
        child = mutate_cells(parent, 2, 6, random.Random(seed), steps=3)
        g = Candidate("cells", (2, 6), 16, cells=child).graph(SPECS)  # validates wiring and channels
        assert len(g.outputs) == 5
        assert child == mutate_cells(parent, 2, 6, random.Random(seed), steps=3)
    with pytest.raises(ValueError, match="reads pool entry 7"):
        Candidate("cells", (2, 4), cells=(Cell(0, 7, 2),))


def test_handmade_necks_use_compares_defaults() -> None:
    choices = {c.label: c for c in handmade_choices()}
    assert choices["fpn"].options == {"width": 32, "levels": [3, 6]}
    assert choices["bifpn"].options["repeats"] == 2
    # one width for torchvision's shared heads: every yolo_pafpn output has 32 channels
    neck = necklace.build_neck("yolo_pafpn", SPECS, **choices["yolo_pafpn"].options)
    assert {s.channels for s in neck.out_specs} == {32}


def test_winner_yaml_round_trip(tmp_path: Path) -> None:
    c = Candidate("bifpn", (2, 6), width=16, fusion="weighted", block="separable", downsample="maxpool", repeats=2)
    graph = c.graph(SPECS)
    graph.save(tmp_path / "winner.yaml")
    built = GraphNeck.from_file(tmp_path / "winner.yaml").eval()
    original = GraphNeck(graph).eval()
    built.load_state_dict(original.state_dict())
    feats = [torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride) for s in SPECS]
    assert built.out_specs == original.out_specs == necklace.build_neck("searched", SPECS, **c.to_options()).out_specs
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(built(feats), original(feats), strict=True))


# ------------------------------------------------------------------------------------------------ latency + config
def test_budgets_parse_and_refuse_nonsense() -> None:
    assert LatencyBudget.parse("3x").limit_ms(0.5) == 1.5
    assert LatencyBudget.parse("2.5ms").limit_ms(0.5) == 2.5
    with pytest.raises(ValueError, match=r"'-1ms'.*'5ms'"):
        LatencyBudget.parse("-1ms")
    assert parse_duration("30m") == 1800.0
    with pytest.raises(ValueError, match=r"'soon'.*30m"):
        SearchConfig(time_budget="soon")
    with pytest.raises(ValueError, match=r"warmup_steps=0 needs base\.pretrained"):
        SearchConfig(warmup_steps=0)


def test_latency_probe_ranks_a_bigger_neck_slower() -> None:
    ref = necklace.build_neck("fpn", SPECS[1:], width=8, levels=(3, 5))
    probe = LatencyProbe(SPECS[1:], 128, ref, repeats=20, warmup=1)
    big = necklace.build_neck("fpn", SPECS[1:], width=96, levels=(3, 7))
    r = probe.measure(big)
    assert r.ratio > 1.5 and r.ms == pytest.approx(r.ratio * probe.reference_ms)


def test_cached_backbone_returns_the_backbones_maps() -> None:
    bb = TinyBackbone(width=4, levels=(2, 5)).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        maps = bb(images)
    cached = CachedBackbone(bb.out_specs, [[m[i] for m in maps] for i in range(2)])
    cached.select([1, 0])
    out = cached(torch.zeros(2, 3, 64, 96))
    assert all(torch.equal(o[0], m[1]) and torch.equal(o[1], m[0]) for o, m in zip(out, maps, strict=True))
    with pytest.raises(ValueError, match="select"):
        cached(torch.zeros(3, 3, 64, 96))


# ------------------------------------------------------------------------------------------------ the verdict
def test_a_searched_neck_wins_only_beyond_the_seed_noise() -> None:
    stats = {"s5": Stat.of([0.30, 0.31, 0.32]), "fpn": Stat.of([0.20, 0.21, 0.22])}
    win = decide_from_stats(stats, ["s5"], "fpn", "ap")
    assert win.winner == "s5" and win.recommended == "s5" and win.significance.exceeds_noise
    close = {"s5": Stat.of([0.22, 0.30, 0.26]), "fpn": Stat.of([0.20, 0.28, 0.24])}
    stands = decide_from_stats(close, ["s5"], "fpn", "ap")
    assert stands.winner is None and stands.recommended == "fpn"
    assert "stands" in stands.lines[0] and "within the seed noise" in stands.lines[0]
    none = decide_from_stats({"s5": Stat.of([0.1, 0.1])}, ["s5"], None, "ap")
    assert none.winner is None and none.recommended == "s5" and "budget" in none.lines[0]


def _metrics(ap: float) -> CocoMetrics:
    return CocoMetrics.from_stats([ap, ap, ap, ap, -1.0, -1.0] + [ap] * 6)


def test_no_winner_when_nothing_beats_the_baseline() -> None:
    """A compare result where the searched neck is *behind* the hand-made one: the hand-made neck stands."""
    ms = LatencyStats.from_seconds([0.001])
    labels = {"s3-fpn-p2p6": [0.18, 0.19, 0.20], "pafpn": [0.21, 0.22, 0.23]}
    config = CompareConfig(necks=(NeckChoice("searched", {}, "s3-fpn-p2p6"), NeckChoice("pafpn", {})), seeds=(0, 1, 2))
    necks = []
    for choice in config.necks:
        runs = tuple(
            RunResult(choice.label, s, Path("."), _metrics(v), 1.0, 10, 2.0, 1.0, "trained")
            for s, v in enumerate(labels[choice.label])
        )
        stats = {m: Stat.of([v for r in runs if (v := getattr(r.metrics, m)) >= 0]) for m in METRICS}
        necks.append(NeckResult(choice, runs, stats, NeckProfile(64, 1, 0.1, 1, 0.1, ms, ms, 1), None))
    result = CompareResult(config, tuple(necks), "pafpn", 1.0, {}, {})
    v = decide(result, ["s3-fpn-p2p6"], "pafpn", "ap_small")
    assert v.winner is None and v.recommended == "pafpn" and v.best_searched == "s3-fpn-p2p6"
    assert v.significance is not None and v.significance.diff < 0
    assert "not ahead" in v.lines[0] and "Welch" in v.lines[0]


def test_finalists_skip_pruned_and_duplicate_trials() -> None:
    rec = [
        TrialRecord(0, "hand-made", "fpn", "fpn", {"w": 1}, "complete", value=0.2, rungs=({"step": 4},)),
        TrialRecord(1, "hand-made", "pafpn", "pafpn", {"w": 2}, "pruned", value=0.5, pruned_at=0, rungs=({"step": 2},)),
        TrialRecord(2, "searched", "a", "searched", {"levels": [2, 6]}, "complete", value=0.3),
        TrialRecord(3, "searched", "a", "searched", {"levels": [2, 6]}, "complete", value=0.3, duplicate_of=2),
        TrialRecord(4, "searched", "b", "searched", {"levels": [3, 6]}, "rejected", latency_ms=9.0),
        TrialRecord(5, "searched", "c", "searched", {"levels": [3, 5]}, "complete", value=0.25),
    ]
    searched, hand = finalists(rec, top=5)
    assert [r.number for r in searched] == [2, 5]
    assert hand is not None and hand.label == "fpn"  # finished every rung beats a higher value at an early rung


# ------------------------------------------------------------------------------------------------ end to end
TINY_BASE = CPU_BASE.replace(
    image_size=64,
    backbone_options={"width": 4, "levels": [2, 5]},
    data_options={"num_images": 20, "val_images": 6},
    batch_size=2,
    steps=4,
    log_every=2,
    checkpoint_every=2,
    tensorboard=False,
)


def tiny(output: Path, **changes: Any) -> SearchConfig:
    kw: dict[str, Any] = {
        "base": TINY_BASE,
        "warmup_steps": 4,
        "rung_steps": 2,
        "rungs": 3,
        "reduction_factor": 2,
        "n_trials": 7,
        "latency_budget": "1000x",
        "latency_repeats": 8,
        "handmade": ("fpn", "pafpn"),
        "fidelity_images": 16,
        "verdict": False,
        "output": str(output),
    }
    kw.update(changes)
    return SearchConfig(**kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("optuna")
    from necklace.detection.search import search

    return search(tiny(tmp_path_factory.mktemp("search")), progress=False)


def test_weak_trials_are_pruned_at_a_rung(uninterrupted: Any) -> None:
    pruned = [r for r in uninterrupted.records if r.status == "pruned"]
    assert pruned, [r.outcome for r in uninterrupted.records]
    for r in pruned:
        assert r.pruned_at is not None and len(r.rungs) == r.pruned_at + 1 < 3
        assert r.outcome.startswith(f"pruned at rung {r.pruned_at + 1}")
    hand = [r for r in uninterrupted.records if r.kind == "hand-made"]
    assert [r.status for r in hand] == ["complete", "complete"]  # the bar is never pruned
    anchors = [r for r in uninterrupted.records if "(level anchor)" in r.label]
    assert [r.options["levels"][0] for r in anchors] == [2, 3, 4]  # the plain fpn at every finest level
    complete = [r for r in uninterrupted.records if r.status == "complete"]
    assert complete and all([d["step"] for d in r.rungs] == [2, 4, 8] for r in complete)
    assert uninterrupted.counts["trained"] == 7  # the study ran the trials it was sized for
    rows = (Path(uninterrupted.config.output) / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + len(uninterrupted.records) and "pruned at rung" in "\n".join(rows)


def test_resume_after_an_interruption_gives_the_same_trials(uninterrupted: Any, tmp_path: Path) -> None:
    from necklace.detection.search import search

    cfg = tiny(tmp_path)
    assert_search_resumes(search, cfg, uninterrupted, 3, tmp_path)  # Ctrl-C in trial 3, after its first rung


def test_another_config_in_the_same_folder_is_refused(uninterrupted: Any) -> None:
    from necklace.detection.search import search

    with pytest.raises(ValueError, match=r"another configuration \(.*rung_steps: 2 there, 3 now"):
        search(tiny(Path(uninterrupted.config.output), rung_steps=3), progress=False)


def test_a_budget_below_every_handmade_neck_trains_nothing_over_it(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from necklace.detection.search import search

    result = search(
        tiny(tmp_path, latency_budget="0.75x", n_trials=2, handmade=("fpn", "pafpn", "bifpn")), progress=False
    )
    hand = [r for r in result.records if r.kind == "hand-made"]
    assert {r.status for r in hand} == {"rejected"} and all(not r.rungs for r in hand)
    trained = [r for r in result.records if r.trained]
    assert all(r.latency_ms is not None and r.latency_ms <= result.limit_ms for r in trained)
    rejected = [r for r in result.records if r.status == "rejected"]
    assert all(r.latency_ms > result.limit_ms and r.seconds < 30 for r in rejected)
    assert "rejected: over the latency budget" in (tmp_path / "trials.md").read_text()
    assert result.verdict is None and result.winner_path is None  # no verdict, no winner file


def test_the_command_runs_a_search_with_a_verdict_and_a_winner_yaml(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    parser = argparse.ArgumentParser()
    add_search_parser(parser.add_subparsers(dest="command"))
    argv = ["search", "--trials", "4", "--handmade", "fpn", "--verdict-top", "1", "--verdict-seeds", "0,1",
            "--image-size", "64", "--batch-size", "2", "--steps", "4", "--backbone-option", "width=4",
            "--data-option", "num_images=20", "--data-option", "val_images=6", "--warmup-steps", "4",
            "--rung-steps", "2", "--rungs", "2", "--latency-budget", "1000x", "--output", str(tmp_path),
            "-q"]  # fmt: skip
    args = parser.parse_args(argv)
    cfg = search_config_from_args(args)
    assert cfg.base.backbone_options == {"width": 4, "levels": [2, 5]} and cfg.n_trials == 4
    out = io.StringIO()
    assert run(args, out, io.StringIO()) == 0
    text = out.getvalue()
    assert "trials: " in text and "winner:" in text
    results = json.loads((tmp_path / "results.json").read_text())
    verdict = results["verdict"]
    assert verdict["best_handmade"] == "fpn" and verdict["recommended"] in (verdict["best_searched"], "fpn")
    winner = GraphNeck.from_file(tmp_path / "winner.yaml")
    records = [
        TrialRecord(t["number"], t["kind"], t["label"], t["neck"], t["options"], t["status"]) for t in results["trials"]
    ]
    rec = next(r for r in records if finalist_label(r) == verdict["recommended"])
    assert winner.out_specs == necklace.build_neck(rec.neck, winner.in_specs, **rec.options).out_specs
    for name in ("report.md", "trials.md", "trials.csv", "search.png", "verdict/results.json"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "## Verdict" in report and "## Every trial" in report and "winner.yaml" in report


def test_the_free_space_mutates_merging_cells(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from necklace.detection.search import search

    space = SearchSpace(templates=("cells",), min_levels=(3,), max_levels=(5,), widths=(8,), free_cells=True)
    result = search(tiny(tmp_path, space=space, n_trials=4, handmade=("fpn",), rungs=1), progress=False)
    cells = [r for r in result.records if r.options.get("template") == "cells" and r.duplicate_of is None]
    assert len(cells) >= 3 and all(r.status == "complete" for r in cells)
    lists = {json.dumps(r.options["cells"]) for r in cells}
    assert len(lists) == len(cells)  # every trial a different mutation
    for r in cells:  # each builds, and is saved / rebuilt as a graph like any candidate
        g = Candidate.from_options(r.options).graph(SPECS)
        assert [s.stride for s in g.out_specs] == [8, 16, 32]


def test_the_whole_detector_can_be_what_is_timed(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from necklace.detection.search import search

    cfg = tiny(tmp_path, latency_scope="detector", n_trials=2, handmade=("fpn",), anchors=False, pruner="hyperband")
    result = search(cfg, progress=False)
    fpn = next(r for r in result.records if r.kind == "hand-made")
    assert fpn.latency["runtime"] == "torch (eager detector)" and fpn.latency["ratio"] == pytest.approx(1, rel=0.5)
    assert result.reference_ms > 1.0  # a whole Faster R-CNN, not a neck: milliseconds
    assert result.counts["trained"] == 2
