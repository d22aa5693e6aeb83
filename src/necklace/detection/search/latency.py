"""Latency first: every candidate is deployed and timed on the target device and runtime before any training.

A neck that takes a fraction of a millisecond is timed on a machine whose speed drifts (other processes, turbo,
caches), so each candidate is timed **against a fixed reference neck**, interleaved
(:func:`necklace.bench.interleaved`: every round calls both, the order balanced). Its latency is the ratio of the
two series' lower quartiles (a call the scheduler preempts only ever gets slower, and on a busy machine that can be
half the calls, which a median does not survive) times the reference's lower-quartile latency, measured once when
the search starts and stored with it, so a resumed search judges the same way. A budget is given in milliseconds
(``"5ms"``, ``5``) or relative to the reference neck (``"1.5x"``: at most 1.5 times its latency).

What is timed (``scope``): ``"neck"``, the neck alone on the backbone maps of one image of the data's size
(batch 1), after ``necklace.deploy(neck, maps, runtime=...)``; or ``"detector"``, the whole detector
(backbone + neck + head + post-processing) in eager torch on one image.

Example:
    >>> b = LatencyBudget.parse("1.5x")
    >>> b.relative, b.limit_ms(reference_ms=2.0), str(b)
    (True, 3.0, '1.5x the reference neck')
    >>> LatencyBudget.parse("4ms").limit_ms(reference_ms=2.0), LatencyBudget.parse(2.5).value
    (4.0, 2.5)
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from necklace.bench import interleaved, random_features, stats_ms
from necklace.spec import FeatureSpec

__all__ = ["LATENCY_SCOPES", "LatencyBudget", "LatencyProbe", "LatencyResult"]

LATENCY_SCOPES = ("neck", "detector")
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|x)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LatencyBudget:
    """A latency limit: ``value`` milliseconds, or ``value`` times the reference neck's latency (``relative``).

    Example:
        >>> LatencyBudget.parse("0.8ms"), LatencyBudget.parse("2x").relative
        (LatencyBudget(value=0.8, relative=False), True)
        >>> LatencyBudget.parse("fast")
        Traceback (most recent call last):
        ...
        ValueError: latency budget 'fast': write milliseconds ('5ms' or 5) or a multiple of ... ('1.5x').
    """

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not self.value > 0:
            raise ValueError(f"LatencyBudget.value must be a positive number, got {self.value!r}.")
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, text: str | float | LatencyBudget) -> LatencyBudget:
        """``"5ms"`` / ``"5"`` / ``5`` (milliseconds) or ``"1.5x"`` (relative)."""
        if isinstance(text, LatencyBudget):
            return text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(float(text))
        m = _BUDGET.match(str(text)) if isinstance(text, str) else None
        if m is None or not float(m.group(1)) > 0:
            raise ValueError(
                f"latency budget {text!r}: write milliseconds ('5ms' or 5) or a multiple of the reference neck's "
                "latency ('1.5x')."
            )
        return cls(float(m.group(1)), (m.group(2) or "").lower() == "x")

    def limit_ms(self, reference_ms: float) -> float:
        """The limit in milliseconds given the reference neck's latency."""
        return self.value * reference_ms if self.relative else self.value

    def to_text(self) -> str:
        """The form :meth:`parse` reads back (``"1.5x"``, ``"5ms"``)."""
        return f"{self.value:g}x" if self.relative else f"{self.value:g}ms"

    def __str__(self) -> str:
        return f"{self.value:g}x the reference neck" if self.relative else f"{self.value:g} ms"


@dataclass(frozen=True)
class LatencyResult:
    """One candidate's latency: ``ms`` (= ``ratio`` x the reference's ms; ``ratio``: of the lower quartiles of the
    candidate's and the reference's interleaved timings), the quartiles of the per-round ratios, the median of its
    own timings (``raw_ms``, drifts with the machine), the runtime used and the seconds it took.

    Example:
        >>> r = LatencyResult(ms=1.2, ratio=2.0, ratio_p25=1.9, ratio_p75=2.1, raw_ms=1.3, runtime="torch", seconds=0.4)
        >>> r.to_dict()["ms"], r.to_dict()["runtime"]
        (1.2, 'torch')
    """

    ms: float
    ratio: float
    ratio_p25: float
    ratio_p75: float
    raw_ms: float
    runtime: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ms": self.ms,
            "ratio": self.ratio,
            "ratio_p25": self.ratio_p25,
            "ratio_p75": self.ratio_p75,
            "raw_ms": self.raw_ms,
            "runtime": self.runtime,
            "seconds": self.seconds,
        }


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[1], q[0], q[2]


class LatencyProbe:
    """Times necks (or detectors) against one reference on one device and runtime.

    Args:
        in_specs: the backbone's maps; the neck's example inputs are random maps of one ``image_size`` image.
        image_size: the data's image side (pixels).
        reference: the reference neck (``scope="neck"``) or detector (``scope="detector"``).
        runtime: a :func:`necklace.deploy` runtime (``"torch"``, ``"native"``, ``"onnxruntime"``, ``"openvino"``,
            ``"auto"``, ...); ``scope="detector"`` always times eager torch.
        device: ``"cpu"`` or ``"cuda"``.
        repeats, warmup: interleaved rounds per measurement (fewer for slow necks: about ``max_seconds``).
        threads: torch threads while timing (``None``: as set).
        reference_ms: the reference's latency from an earlier run (a resumed search); measured when ``None``.

    Example:
        >>> specs = [FeatureSpec(8, 8), FeatureSpec(16, 16)]
        >>> ref = necklace.build_neck("fpn", specs, width=8).eval()
        >>> probe = LatencyProbe(specs, 64, ref, repeats=4, warmup=1)
        >>> r = probe.measure(necklace.build_neck("fpn", specs, width=8, levels=(3, 7)).eval())
        >>> r.ms > 0 and r.runtime == "torch" and probe.reference_ms > 0
        True
    """

    def __init__(
        self,
        in_specs: Sequence[FeatureSpec],
        image_size: int,
        reference: nn.Module,
        runtime: str = "torch",
        device: str = "cpu",
        scope: str = "neck",
        repeats: int = 60,
        warmup: int = 3,
        threads: int | None = None,
        reference_ms: float | None = None,
        max_seconds: float = 3.0,
    ) -> None:
        if scope not in LATENCY_SCOPES:
            raise ValueError(f"latency scope {scope!r}: choose one of {list(LATENCY_SCOPES)}.")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"LatencyProbe.repeats must be a positive int, got {repeats!r}.")
        self.in_specs, self.image_size = tuple(in_specs), int(image_size)
        self.runtime, self.device, self.scope = runtime, torch.device(device), scope
        self.repeats, self.warmup, self.threads, self.max_seconds = repeats, warmup, threads, max_seconds
        self.feats = random_features(self.in_specs, (self.image_size, self.image_size), device=self.device)
        self.image = torch.rand(3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(0))
        self.image = self.image.to(self.device)
        self._reference, self.reference_runtime = self._callable(reference.to(self.device).eval())
        self.reference_ms = float(reference_ms) if reference_ms is not None else self._reference_ms()

    # ------------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _callable(self, module: nn.Module) -> tuple[Callable[[], object], str]:
        """What to time and the runtime it runs on."""
        if self.scope == "detector":
            model = module.eval()

            def run_detector() -> object:
                with torch.no_grad():
                    out = model([self.image])
                self._sync()
                return out

            return run_detector, "torch (eager detector)"
        import necklace

        timed: Any = necklace.deploy(module.eval(), self.feats, runtime=self.runtime)
        feats = self.feats

        def run_neck() -> object:
            with torch.no_grad():
                out = timed(feats)
            self._sync()
            return out

        return run_neck, str(timed.deploy_report.runtime)

    def _rounds(self, calls: dict[str, Callable[[], object]]) -> int:
        start = time.perf_counter()
        for fn in calls.values():
            fn()
        per_round = max(time.perf_counter() - start, 1e-6)
        return max(5, min(self.repeats, int(self.max_seconds / per_round)))

    def _reference_ms(self) -> float:
        with _threads(self.threads):
            calls = {"reference": self._reference}
            times = interleaved(calls, 3 * self._rounds(calls), warmup=self.warmup)
        return float(stats_ms(times["reference"])["p25_ms"])

    # ------------------------------------------------------------------ public
    def measure(self, module: nn.Module) -> LatencyResult:
        """Deploy ``module`` (a neck built for ``in_specs``, or a detector) and time it against the reference."""
        start = time.perf_counter()
        with _threads(self.threads):
            fn, runtime = self._callable(module.to(self.device).eval())
            calls = {"candidate": fn, "reference": self._reference}
            times = interleaved(calls, self._rounds(calls), warmup=self.warmup)
        ratios = [a / b for a, b in zip(times["candidate"], times["reference"], strict=True)]
        _, p25, p75 = _quartiles(ratios)
        cand, ref = stats_ms(times["candidate"]), stats_ms(times["reference"])
        ratio = float(cand["p25_ms"]) / float(ref["p25_ms"])
        return LatencyResult(
            ms=ratio * self.reference_ms,
            ratio=ratio,
            ratio_p25=p25,
            ratio_p75=p75,
            raw_ms=float(cand["median_ms"]),
            runtime=runtime,
            seconds=time.perf_counter() - start,
        )
