"""The search space: necklace graphs as a small typed :class:`Candidate` (template + knobs), the hand-made necks
that are always in the race, and the ``searched`` registry entry that builds a candidate from plain options.

Templates (each a function from backbone ``in_specs`` to a :class:`~necklace.NeckGraph`):

- ``fpn``: 1x1 laterals, top-down fusion, a refine block per level (Lin et al., 2017);
- ``pafpn``: ``fpn`` then a bottom-up path of fused, refined nodes (Liu et al., 2018);
- ``bifpn``: ``repeats`` bidirectional cells, every node fusing all maps of its level (Tan et al., 2020);
- ``nasfpn``: the published NAS-FPN merging cells over five levels, stacked ``repeats`` times (Ghiasi et al.);
- ``yolo_pan``: YOLOv8's top-down + bottom-up PAN straight from the backbone maps (concat + C2f by default);
- ``cells`` (the opt-in free space): any list of merging cells (:mod:`necklace.detection.search.cells`), changed
  by mutation during the search.

Knobs: ``levels`` (output levels ``lo..hi``, N2..N7), ``width`` (one int, or one per level), ``fusion``
(``sum`` | ``weighted`` (EfficientDet's fast normalised weights) | ``concat``), ``upsample`` (``nearest`` |
``bilinear``), ``downsample`` (``conv`` | ``dwconv`` | ``maxpool``), ``block`` (refine block: ``conv`` |
``separable`` | ``csp`` | ``c2f``) and ``repeats`` (cells / stacks of ``bifpn`` and ``nasfpn``; bottlenecks of a
``csp`` / ``c2f`` block elsewhere). Levels above the backbone's last are made by ``downsample`` from the level
below. Convolutions are Conv-BN-ReLU, alignments 1x1 Conv-BN.

A candidate is plain data (:meth:`Candidate.to_options`), so it goes wherever a registered neck goes:
``build_neck("searched", in_specs, **candidate.to_options())``, a :class:`~necklace.detection.train.TrainConfig`
(``neck="searched"``), a :class:`~necklace.detection.compare.NeckChoice`; and :meth:`Candidate.graph` gives the
:class:`~necklace.NeckGraph` to save as YAML for :meth:`necklace.GraphNeck.from_file`.

Example:
    >>> specs = [FeatureSpec(16, 4), FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32)]
    >>> c = Candidate("pafpn", levels=(2, 6), width=32, fusion="weighted")
    >>> [s.stride for s in c.graph(specs).out_specs], c.label
    ([4, 8, 16, 32, 64], 'pafpn P2-P6 w32 weighted nearest/conv conv')
    >>> register_searched_neck()  # once per process: "searched" joins the registry
    >>> neck = necklace.build_neck("searched", specs, **c.to_options())
    >>> neck.out_specs == c.graph(specs).out_specs
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from necklace.detection.compare import NeckChoice, default_neck_options
from necklace.detection.search.cells import Cell, cell_nodes, cells_from_data, check_cells, nasfpn_cells
from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.registry import list_necks, register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "BLOCK_CHOICES",
    "DEFAULT_HANDMADE",
    "DOWNSAMPLE_CHOICES",
    "FUSION_CHOICES",
    "TEMPLATES",
    "UPSAMPLE_CHOICES",
    "Candidate",
    "SearchSpace",
    "handmade_choices",
    "register_searched_neck",
    "searched_neck",
]

#: template names; ``cells`` is the opt-in free space of mutated merging cells
TEMPLATES = ("fpn", "pafpn", "bifpn", "nasfpn", "yolo_pan", "cells")
#: fusion knob -> graph ``Node.fuse``
_FUSE = {"sum": "sum", "weighted": "fast", "concat": "concat"}
FUSION_CHOICES = tuple(_FUSE)
UPSAMPLE_CHOICES = ("nearest", "bilinear")
DOWNSAMPLE_CHOICES = ("conv", "dwconv", "maxpool")
BLOCK_CHOICES = ("conv", "separable", "csp", "c2f")
#: templates whose ``repeats`` counts cells / stacks (elsewhere it is the bottlenecks of a csp / c2f block)
_STACKED = ("bifpn", "nasfpn", "cells")
_MIN_LEVEL, _MAX_LEVEL = 2, 7
#: the hand-made necks of a search (compare's defaults; ``yolo_pafpn`` with one width, see :func:`handmade_choices`)
DEFAULT_HANDMADE = ("fpn", "pafpn", "bifpn", "yolo_pafpn")
_CONV = ConvCfg(norm="bn", act="relu")
_ALIGN = ConvCfg(norm="bn")


def _choice(owner: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{owner} {value!r} is not one of {list(choices)}; pick one of those.")


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: a template and its knobs (see the module docstring).

    ``width`` is one int (every level) or one int per level ``lo..hi``; ``cells`` is the merging-cell list of the
    ``cells`` template (ignored, and empty, elsewhere). Invalid combinations raise ``ValueError`` naming the knob.

    Example:
        >>> c = Candidate("fpn", levels=(2, 5), width=(16, 32, 32, 32))
        >>> c.widths, c.finest_stride
        ({2: 16, 3: 32, 4: 32, 5: 32}, 4)
        >>> Candidate.from_options(c.to_options()) == c
        True
    """

    template: str
    levels: tuple[int, int] = (3, 6)
    width: int | tuple[int, ...] = 32
    fusion: str = "sum"
    upsample: str = "nearest"
    downsample: str = "conv"
    block: str = "conv"
    repeats: int = 1
    cells: tuple[Cell, ...] = field(default=())

    def __post_init__(self) -> None:
        _choice("Candidate.template", self.template, TEMPLATES)
        lv = self.levels
        if isinstance(lv, (str, int)) or not isinstance(lv, Sequence) or len(lv) != 2:
            raise ValueError(f"Candidate.levels must be a (lo, hi) pair such as (3, 6), got {lv!r}.")
        lo, hi = int(lv[0]), int(lv[1])
        if not _MIN_LEVEL <= lo < hi <= _MAX_LEVEL:
            raise ValueError(
                f"Candidate.levels {tuple(lv)}: need {_MIN_LEVEL} <= lo < hi <= {_MAX_LEVEL} (N2..N7), e.g. (3, 6)."
            )
        object.__setattr__(self, "levels", (lo, hi))
        n = hi - lo + 1
        w = self.width
        if isinstance(w, Sequence) and not isinstance(w, str):
            ws = tuple(int(v) for v in w)
            if len(ws) != n:
                raise ValueError(f"Candidate.width {list(ws)}: give one int or {n} ints (levels {lo}..{hi}).")
            w = ws[0] if len(set(ws)) == 1 else ws
        elif isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"Candidate.width must be an int or a list of ints, got {type(w).__name__}.")
        if min(w if isinstance(w, tuple) else (w,)) < 1:
            raise ValueError(f"Candidate.width must be positive, got {self.width!r}.")
        object.__setattr__(self, "width", w)
        _choice("Candidate.fusion", self.fusion, FUSION_CHOICES)
        _choice("Candidate.upsample", self.upsample, UPSAMPLE_CHOICES)
        _choice("Candidate.downsample", self.downsample, DOWNSAMPLE_CHOICES)
        _choice("Candidate.block", self.block, BLOCK_CHOICES)
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 1 <= self.repeats <= 8:
            raise ValueError(f"Candidate.repeats must be an int in 1..8, got {self.repeats!r}.")
        if self.template == "nasfpn" and hi - lo != 4:
            raise ValueError(
                f"Candidate('nasfpn').levels {(lo, hi)}: NAS-FPN's cells connect five levels; use ({lo}, {lo + 4})."
            )
        cells = cells_from_data(self.cells) if self.cells else ()
        if self.template == "cells":
            check_cells(cells, lo, hi)
        elif cells:
            raise ValueError(f"Candidate({self.template!r}) takes no cells; cells belong to the 'cells' template.")
        object.__setattr__(self, "cells", cells)
        if self.template in ("nasfpn", "cells") and self.fusion == "concat":
            raise ValueError(f"Candidate({self.template!r}): merging cells fuse by sum or gp; use fusion 'sum'.")

    # ------------------------------------------------------------------ views
    @property
    def widths(self) -> dict[int, int]:
        """Channels of each level ``lo..hi``."""
        lo, hi = self.levels
        if isinstance(self.width, tuple):
            return {lo + i: w for i, w in enumerate(self.width)}
        return dict.fromkeys(range(lo, hi + 1), self.width)

    @property
    def finest_stride(self) -> int:
        """Stride of the highest-resolution output (4 for a neck with an N2 level)."""
        return 2 ** self.levels[0]

    @property
    def label(self) -> str:
        """A short human-readable description (report tables)."""
        lo, hi = self.levels
        w = self.width if isinstance(self.width, int) else "/".join(map(str, self.width))
        parts = [self.template, f"P{lo}-P{hi}", f"w{w}"]
        if self.template not in ("nasfpn", "cells"):
            parts.append(self.fusion)
        parts.append(f"{self.upsample}/{self.downsample}")
        parts.append(self.block + (f"x{self.repeats}" if self.repeats > 1 else ""))
        if self.template == "cells":
            parts.append(f"{len(self.cells)} cells")
        return " ".join(parts)

    # ------------------------------------------------------------------ plain data
    def to_options(self) -> dict[str, Any]:
        """Plain options for ``build_neck("searched", in_specs, **options)`` (lists, not tuples)."""
        out: dict[str, Any] = {
            "template": self.template,
            "levels": list(self.levels),
            "width": list(self.width) if isinstance(self.width, tuple) else self.width,
            "fusion": self.fusion,
            "upsample": self.upsample,
            "downsample": self.downsample,
            "block": self.block,
            "repeats": self.repeats,
        }
        if self.cells:
            out["cells"] = [c.to_list() for c in self.cells]
        return out

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_options`; unknown keys are an error listing the known ones."""
        if not isinstance(options, Mapping):
            raise TypeError(f"Candidate.from_options expects a dict, got {type(options).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown Candidate options {unknown}; known: {sorted(names)}.")
        kw = dict(options)
        if "levels" in kw:
            kw["levels"] = tuple(kw["levels"])
        if isinstance(kw.get("width"), list):
            kw["width"] = tuple(kw["width"])
        if "cells" in kw:
            kw["cells"] = cells_from_data(kw["cells"])
        return cls(**kw)

    def replace(self, **changes: Any) -> Candidate:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the graph
    def graph(self, in_specs: Sequence[FeatureSpec]) -> NeckGraph:
        """The :class:`~necklace.NeckGraph` of this candidate on a backbone with ``in_specs``.

        Example:
            >>> specs = [FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32)]
            >>> g = Candidate("bifpn", levels=(3, 6), width=16, fusion="weighted", repeats=2).graph(specs)
            >>> len(g.outputs), {n.fuse for n in g.nodes if len(n.inputs) > 1}
            (4, {'fast'})
        """
        specs = validate_in_specs(tuple(in_specs))
        b_levels = [s.level for s in specs]
        lo, hi = self.levels
        if lo not in b_levels or (lo == max(b_levels) and self.template == "yolo_pan"):
            where = "a backbone level below the last one" if self.template == "yolo_pan" else "a backbone level"
            raise ValueError(
                f"Candidate {self.label!r}: its finest level P{lo} (stride {2**lo}) must be {where}; the backbone "
                f"has levels {b_levels} (strides {[s.stride for s in specs]}). Start the levels at one of those, or "
                f"use a backbone with a stride-{2**lo} map."
            )
        nodes, outs = _BUILDERS[self.template](self, specs)
        return NeckGraph(
            in_specs=specs,
            nodes=tuple(nodes),
            outputs=tuple(outs[lv] for lv in range(lo, hi + 1)),
            conv=_CONV,
            align=_ALIGN,
            up=self.upsample,
            down=self.downsample,
        )


# ------------------------------------------------------------------------------------------------ templates
def _refine(c: Candidate) -> tuple[str, dict[str, Any]]:
    if c.block in ("csp", "c2f"):
        return c.block, {"n": 1 if c.template in _STACKED else c.repeats}
    return c.block, {}


def _merge(name: str, level: int, edges: Sequence[Edge | str], ch: int, c: Candidate, refine: bool) -> Node:
    """A node fusing ``edges`` by the candidate's fusion; a concat without a refine block gets a 1x1 conv."""
    fuse = _FUSE[c.fusion] if len(edges) > 1 else "sum"
    block, args = _refine(c) if refine else ("identity", {})
    if fuse == "concat" and block == "identity":
        block, args = "conv", {"kernel": 1}
    return Node(name, level, tuple(edges), ch, fuse, block, args)


def _top_in(c: Candidate, specs: Sequence[FeatureSpec]) -> int:
    return min(c.levels[1], max(s.level for s in specs))


def _extras(c: Candidate, top: int, source: str, prefix: str = "X") -> tuple[list[Node], dict[int, str]]:
    """Levels above ``top`` (the last backbone level used): ``downsample`` from the level below."""
    w = c.widths
    nodes, outs, prev = [], {}, source
    for lv in range(top + 1, c.levels[1] + 1):
        nodes.append(Node(f"{prefix}{lv}", lv, (Edge(prev, down=c.downsample),), w[lv]))
        outs[lv] = prev = f"{prefix}{lv}"
    return nodes, outs


def _fpn_core(c: Candidate, top: int) -> list[Node]:
    """FPN's laterals ``L<l>`` (top-down fused) and refined outputs ``P<l>`` for levels ``lo..top``."""
    lo, w = c.levels[0], c.widths
    nodes: list[Node] = []
    for lv in range(top, lo - 1, -1):
        edges: list[Edge] = [Edge(input_name(lv), align="always")]
        if lv < top:
            edges.append(Edge(f"L{lv + 1}", up=c.upsample))
        nodes.append(_merge(f"L{lv}", lv, edges, w[lv], c, refine=False))
    for lv in range(top, lo - 1, -1):
        nodes.append(Node(f"P{lv}", lv, (f"L{lv}",), w[lv], "sum", *_refine(c)))
    return nodes


def _fpn_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    lo, top = c.levels[0], _top_in(c, specs)
    extra, extra_outs = _extras(c, top, f"P{top}")
    return _fpn_core(c, top) + extra, {**{lv: f"P{lv}" for lv in range(lo, top + 1)}, **extra_outs}


def _pafpn_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    lo, w, top = c.levels[0], c.widths, _top_in(c, specs)
    nodes = _fpn_core(c, top)
    outs, prev = {lo: f"P{lo}"}, f"P{lo}"
    for lv in range(lo + 1, top + 1):
        nodes.append(_merge(f"N{lv}", lv, (f"P{lv}", Edge(prev, down=c.downsample)), w[lv], c, refine=True))
        outs[lv] = prev = f"N{lv}"
    extra, extra_outs = _extras(c, top, prev)
    return nodes + extra, {**outs, **extra_outs}


def _bifpn_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    (lo, hi), w, top = c.levels, c.widths, _top_in(c, specs)
    nodes, extra_outs = _extras(c, top, input_name(top))
    latest = {lv: input_name(lv) for lv in range(lo, top + 1)} | extra_outs
    for r in range(c.repeats):
        cell = {lv: [latest[lv]] for lv in latest}
        for lv in range(hi - 1, lo - 1, -1):
            name = f"r{r}_td{lv}"
            nodes.append(_merge(name, lv, (cell[lv][-1], Edge(cell[lv + 1][-1], up=c.upsample)), w[lv], c, True))
            cell[lv].append(name)
        for lv in range(lo + 1, hi + 1):
            name = f"r{r}_out{lv}"
            edges: list[Edge | str] = [*cell[lv], Edge(cell[lv - 1][-1], down=c.downsample)]
            nodes.append(_merge(name, lv, edges, w[lv], c, True))
            cell[lv].append(name)
        latest = {lv: cell[lv][-1] for lv in cell}
    return nodes, latest


def _lateral_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    """1x1 laterals of the backbone levels, then the extra levels (1x1 + ``downsample``): NAS-FPN's inputs."""
    (lo, hi), w, top = c.levels, c.widths, _top_in(c, specs)
    nodes = [Node(f"I{lv}", lv, (Edge(input_name(lv), align="always"),), w[lv]) for lv in range(lo, top + 1)]
    for lv in range(top + 1, hi + 1):
        nodes.append(Node(f"I{lv}", lv, (Edge(f"I{lv - 1}", align="always", down=c.downsample),), w[lv]))
    return nodes, {lv: f"I{lv}" for lv in range(lo, hi + 1)}


def _cells_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    lo, hi = c.levels
    nodes, names = _lateral_nodes(c, specs)
    if c.template == "nasfpn":
        stacks = [nasfpn_cells(lo, hi)] * c.repeats
    else:
        stacks = [c.cells] * c.repeats
    block = _refine(c)
    for s, cells in enumerate(stacks):
        more, names = cell_nodes(cells, lo, hi, c.widths, names, block, c.upsample, c.downsample, prefix=f"s{s}_m")
        nodes += more
    return nodes, names


def _yolo_nodes(c: Candidate, specs: Sequence[FeatureSpec]) -> tuple[list[Node], dict[int, str]]:
    lo, w, top = c.levels[0], c.widths, _top_in(c, specs)
    td = {top: input_name(top)}
    nodes: list[Node] = []
    for lv in range(top - 1, lo - 1, -1):
        name = f"T{lv}" if lv > lo else f"N{lv}"
        nodes.append(_merge(name, lv, (Edge(td[lv + 1], up=c.upsample), input_name(lv)), w[lv], c, True))
        td[lv] = name
    outs, prev = {lo: td[lo]}, td[lo]
    for lv in range(lo + 1, top + 1):
        nodes.append(_merge(f"N{lv}", lv, (Edge(prev, down=c.downsample), td[lv]), w[lv], c, True))
        outs[lv] = prev = f"N{lv}"
    extra, extra_outs = _extras(c, top, prev)
    return nodes + extra, {**outs, **extra_outs}


_BUILDERS: dict[str, Callable[[Candidate, Sequence[FeatureSpec]], tuple[list[Node], dict[int, str]]]] = {
    "fpn": _fpn_nodes,
    "pafpn": _pafpn_nodes,
    "bifpn": _bifpn_nodes,
    "nasfpn": _cells_nodes,
    "cells": _cells_nodes,
    "yolo_pan": _yolo_nodes,
}


# ------------------------------------------------------------------------------------------------ the space
@dataclass(frozen=True)
class SearchSpace:
    """The choices the search draws from (each a tuple; one value fixes that knob).

    ``min_levels`` / ``max_levels``: the finest / coarsest output level; ``uniform_width``: every output level gets
    the same width (torchvision's heads share weights across levels); otherwise ``widths`` is drawn per level.
    ``free_cells``: add the ``cells`` template (mutated merging cells) to ``templates``.

    Example:
        >>> space = SearchSpace.for_backbone([FeatureSpec(16, 4), FeatureSpec(32, 8), FeatureSpec(64, 16),
        ...                                   FeatureSpec(128, 32)])
        >>> space.min_levels, space.max_levels
        ((2, 3, 4), (5, 6, 7))
        >>> picks = {"template": "yolo_pan", "min_level": 2, "max_level": 5, "width": 32}
        >>> space.suggest(lambda name, choices: picks.get(name, choices[0])).label
        'yolo_pan P2-P5 w32 sum nearest/conv conv'
    """

    templates: tuple[str, ...] = ("fpn", "pafpn", "bifpn", "nasfpn", "yolo_pan")
    min_levels: tuple[int, ...] = (3, 4)
    max_levels: tuple[int, ...] = (5, 6, 7)
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    fusions: tuple[str, ...] = FUSION_CHOICES
    upsamples: tuple[str, ...] = UPSAMPLE_CHOICES
    downsamples: tuple[str, ...] = DOWNSAMPLE_CHOICES
    blocks: tuple[str, ...] = BLOCK_CHOICES
    repeats: tuple[int, ...] = (1, 2, 3)
    uniform_width: bool = True
    free_cells: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("templates", TEMPLATES),
            ("fusions", FUSION_CHOICES),
            ("upsamples", UPSAMPLE_CHOICES),
            ("downsamples", DOWNSAMPLE_CHOICES),
            ("blocks", BLOCK_CHOICES),
        ):
            values = tuple(getattr(self, name))
            if not values or isinstance(getattr(self, name), str):
                raise ValueError(f"SearchSpace.{name} must be a non-empty tuple of choices from {list(allowed)}.")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"SearchSpace.{name}: {bad} are not among {list(allowed)}.")
            object.__setattr__(self, name, values)
        for name in ("min_levels", "max_levels", "widths", "repeats"):
            values = tuple(int(v) for v in getattr(self, name))
            if not values or min(values) < 1:
                raise ValueError(f"SearchSpace.{name} must be a non-empty tuple of positive ints, got {values!r}.")
            object.__setattr__(self, name, values)
        if not _MIN_LEVEL <= min(self.min_levels) or max(self.max_levels) > _MAX_LEVEL:
            raise ValueError(f"SearchSpace levels must lie in {_MIN_LEVEL}..{_MAX_LEVEL} (N2..N7).")
        if self.free_cells and "cells" not in self.templates:
            object.__setattr__(self, "templates", (*self.templates, "cells"))

    @classmethod
    def for_backbone(cls, in_specs: Sequence[FeatureSpec], **changes: Any) -> SearchSpace:
        """The default space on a backbone: finest output levels = its levels but the last, coarsest 5..7."""
        levels = [s.level for s in validate_in_specs(tuple(in_specs))]
        mins = tuple(lv for lv in levels[:-1] if lv >= _MIN_LEVEL)
        if not mins:
            raise ValueError(f"the backbone's levels {levels} leave no finest output level in {_MIN_LEVEL}..6.")
        maxs = tuple(lv for lv in (5, 6, 7) if lv > min(mins))
        kw: dict[str, Any] = {"min_levels": mins, "max_levels": maxs, **changes}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown SearchSpace keys {unknown}; known: {sorted(names)}.")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    def anchors(self) -> list[dict[str, Any]]:
        """The plainest candidate at every finest level of the space, as trial parameters (enqueued after the
        hand-made necks, so that each level is measured at full fidelity early and the sampler learns from it):
        the ``fpn`` template to P6 (or the nearest coarsest level), width 32 (or the middle width), sum fusion,
        the first up/down modes, conv blocks.

        Example:
            >>> [(a["min_level"], a["max_level"], a["width"]) for a in SearchSpace(min_levels=(2, 3)).anchors()]
            [(2, 6, 32), (3, 6, 32)]
        """
        template = "fpn" if "fpn" in self.templates else self.templates[0]
        width = 32 if 32 in self.widths else self.widths[len(self.widths) // 2]
        out = []
        for lo in self.min_levels:
            above = [hi for hi in self.max_levels if hi > lo]
            if not above or template in ("nasfpn", "cells"):
                continue
            hi = min(above, key=lambda h: (abs(h - 6), h))
            params: dict[str, Any] = {"template": template, "min_level": lo, "max_level": hi}
            if self.uniform_width:
                params["width"] = width
            else:
                params.update({f"width_p{lv}": width for lv in range(lo, hi + 1)})
            params.update(
                {
                    "fusion": "sum" if "sum" in self.fusions else self.fusions[0],
                    "upsample": self.upsamples[0],
                    "downsample": self.downsamples[0],
                    "block": "conv" if "conv" in self.blocks else self.blocks[0],
                }
            )
            if params["block"] in ("csp", "c2f"):
                params["repeats"] = self.repeats[0]
            out.append(params)
        return out

    def suggest(
        self,
        ask: Callable[[str, Sequence[Any]], Any],
        parent_cells: Callable[[tuple[int, int]], tuple[Cell, ...]] | None = None,
    ) -> Candidate:
        """Draw a :class:`Candidate`: ``ask(name, choices)`` picks each knob (an Optuna trial's
        ``suggest_categorical``); only the knobs the drawn template uses are asked. For ``cells``,
        ``parent_cells(levels)`` gives the list to mutate and ``ask("mutation_seed", ...)`` the mutation."""
        template = ask("template", self.templates)
        lo = ask("min_level", self.min_levels)
        if template == "nasfpn":
            hi = lo + 4
            if hi > _MAX_LEVEL:
                lo, hi = _MAX_LEVEL - 4, _MAX_LEVEL
        else:
            hi = max(ask("max_level", self.max_levels), lo + 1)
        if self.uniform_width:
            width: int | tuple[int, ...] = ask("width", self.widths)
        else:
            width = tuple(ask(f"width_p{lv}", self.widths) for lv in range(lo, hi + 1))
        kw: dict[str, Any] = {"template": template, "levels": (lo, hi), "width": width}
        if template not in ("nasfpn", "cells"):
            kw["fusion"] = ask("fusion", self.fusions)
        kw["upsample"] = ask("upsample", self.upsamples)
        kw["downsample"] = ask("downsample", self.downsamples)
        kw["block"] = ask("block", self.blocks)
        stacked = template in _STACKED
        if stacked or kw["block"] in ("csp", "c2f"):
            kw["repeats"] = ask("repeats", self.repeats)
        if template == "cells":
            import random

            from necklace.detection.search.cells import mutate_cells, panet_cells

            parent = parent_cells((lo, hi)) if parent_cells is not None else ()
            if not parent:
                parent = nasfpn_cells(lo, hi) if hi - lo == 4 else panet_cells(lo, hi)
            seed = ask("mutation_seed", tuple(range(64)))
            kw["cells"] = mutate_cells(parent, lo, hi, random.Random(seed), steps=1 + seed % 3)
        return Candidate(**kw)


# ------------------------------------------------------------------------------------------------ hand-made + registry
def handmade_choices(names: Sequence[str] = DEFAULT_HANDMADE, uniform_width: bool = True) -> tuple[NeckChoice, ...]:
    """The hand-made necks of a search as :class:`~necklace.detection.compare.NeckChoice`: each registered neck with
    ``necklace compare``'s default options (fpn / pafpn / bifpn: width 32, P3-P6; bifpn 2 cells). ``yolo_pafpn``
    keeps its own levels (every backbone level) and, with ``uniform_width`` (torchvision heads), gets
    ``max_channels=128`` so that every output of its preset ``n`` has 32 channels.

    Example:
        >>> [(c.label, c.options) for c in handmade_choices(("fpn", "yolo_pafpn"))]
        [('fpn', {'width': 32, 'levels': [3, 6]}), ('yolo_pafpn', {'max_channels': 128})]
    """
    if isinstance(names, str):
        raise TypeError(f"handmade names must be a list such as ['fpn', 'pafpn'], got the string {names!r}.")
    out = []
    for name in names:
        options = default_neck_options(name)
        if name == "yolo_pafpn" and uniform_width:
            options = {"max_channels": 128, **options}
        out.append(NeckChoice(name, options))
    return tuple(out)


def searched_neck(in_specs: Sequence[FeatureSpec], **options: Any) -> GraphNeck:
    """Build a searched neck from :meth:`Candidate.to_options` (the ``searched`` registry entry). Without options:
    the ``fpn`` template, width 32, from the backbone's finest level to one above its last.

    Example:
        >>> neck = searched_neck([FeatureSpec(32, 8), FeatureSpec(64, 16)], template="pafpn", levels=[3, 5], width=8)
        >>> [s.stride for s in neck.out_specs], [s.stride for s in searched_neck([FeatureSpec(32, 8)]).out_specs]
        ([8, 16, 32], [8, 16])
    """
    specs = validate_in_specs(tuple(in_specs))
    levels = [s.level for s in specs]
    defaults = {"template": "fpn", "levels": [levels[0], min(levels[-1] + 1, _MAX_LEVEL)]}
    return GraphNeck(Candidate.from_options({**defaults, **options}).graph(specs))


def register_searched_neck() -> None:
    """Register the ``searched`` neck (once per process; later calls do nothing).

    :func:`~necklace.detection.search.search` and the verdict call it; call it yourself in a process that builds
    a searched neck by name, e.g. to ``load_model`` a checkpoint of a searched neck.

    Example:
        >>> register_searched_neck()
        >>> "searched" in necklace.list_necks()
        True
    """
    if "searched" in list_necks():  # list_necks() first: it loads the built-in necks before this one
        return
    register_neck(
        "searched",
        searched_neck,
        summary="a neck found by `necklace search`: a template (fpn / pafpn / bifpn / nasfpn / yolo_pan / merging "
        "cells) and its knobs, as plain options",
        paper="necklace search (NAS-FPN's idea, searched per data set: Ghiasi et al., CVPR 2019)",
        knobs=("template", "levels", "width", "fusion", "upsample", "downsample", "block", "repeats", "cells"),
    )
