"""Searched necks: a template and its knobs as plain data (:class:`Candidate`), and the ``searched`` registry entry that
builds one (what ``necklace search`` finds and ``compare`` retrains by name).


Templates (each a function from backbone ``in_specs`` to a :class:`~necklace.NeckGraph`):

- ``fpn``: 1x1 laterals, top-down fusion, a refine block per level (Lin et al., 2017);
- ``pafpn``: ``fpn`` then a bottom-up path of fused, refined nodes (Liu et al., 2018);
- ``bifpn``: ``repeats`` bidirectional cells, every node fusing all maps of its level (Tan et al., 2020);
- ``nasfpn``: the published NAS-FPN merging cells over five levels, stacked ``repeats`` times (Ghiasi et al.);
- ``yolo_pan``: YOLOv8's top-down + bottom-up PAN straight from the backbone maps (concat + C2f by default);
- ``cells`` (the opt-in free space): any list of merging cells (:mod:`necklace.necks.cells`), changed
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
    >>> neck = necklace.build_neck("searched", specs, **c.to_options())
    >>> neck.out_specs == c.graph(specs).out_specs
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.cells import Cell, cell_nodes, cells_from_data, check_cells, nasfpn_cells
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "BLOCK_CHOICES",
    "DOWNSAMPLE_CHOICES",
    "FUSION_CHOICES",
    "TEMPLATES",
    "UPSAMPLE_CHOICES",
    "Candidate",
    "searched",
    "searched_graph",
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


def searched_graph(
    in_specs: Sequence[FeatureSpec],
    template: str = "fpn",
    levels: Sequence[int] | None = None,
    width: int | Sequence[int] = 32,
    fusion: str = "sum",
    upsample: str = "nearest",
    downsample: str = "conv",
    block: str = "conv",
    repeats: int = 1,
    cells: Sequence[Any] = (),
) -> NeckGraph:
    """The graph of a searched neck (the options of :meth:`Candidate.to_options`). ``levels`` defaults to the
    backbone's finest level up to one above its last.

    Example:
        >>> g = searched_graph([FeatureSpec(32, 8), FeatureSpec(64, 16)], template="pafpn", levels=[3, 5], width=8)
        >>> [s.stride for s in g.out_specs]
        [8, 16, 32]
    """
    specs = validate_in_specs(tuple(in_specs))
    b_levels = [s.level for s in specs]
    options: dict[str, Any] = {
        "template": template,
        "levels": list(levels) if levels is not None else [b_levels[0], min(b_levels[-1] + 1, _MAX_LEVEL)],
        "width": width,
        "fusion": fusion,
        "upsample": upsample,
        "downsample": downsample,
        "block": block,
        "repeats": repeats,
    }
    if cells:
        options["cells"] = cells
    return Candidate.from_options(options).graph(specs)


@register_neck(
    "searched",
    summary="a neck found by `necklace search`: a template (fpn / pafpn / bifpn / nasfpn / yolo_pan / merging "
    "cells) and its knobs, as plain options",
    paper="necklace search (NAS-FPN's idea, searched per data set: Ghiasi et al., CVPR 2019)",
    knobs=("template", "levels", "width", "fusion", "upsample", "downsample", "block", "repeats", "cells"),
    options_from=searched_graph,
    small_options={"width": 8},
)
def searched(in_specs: Sequence[FeatureSpec], **options: Any) -> GraphNeck:
    """Build a searched neck from :meth:`Candidate.to_options` (see :func:`searched_graph`).

    Example:
        >>> neck = searched([FeatureSpec(32, 8), FeatureSpec(64, 16)], template="fpn", width=8)
        >>> [s.stride for s in neck.out_specs]
        [8, 16, 32]
    """
    return GraphNeck(searched_graph(in_specs, **options))
