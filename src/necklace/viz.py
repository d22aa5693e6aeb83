"""Draw a :class:`~necklace.graph.NeckGraph` as a picture (PNG/SVG/PDF) with matplotlib.

Layout: one row per pyramid level (coarsest at the top), backbone inputs in the leftmost column, each node in
the first column after its same-level inputs, so a top-down or bottom-up pass shares one column (the classic
FPN / BiFPN drawing). Edges are coloured by direction (blue: upsample, red: downsample, grey: same level) and
labelled with their resize (``up x2 nearest``, ``down /2 maxpool``) and ``1x1`` channel alignment; outputs
are highlighted. matplotlib is optional: ``pip install 'necklace[viz]'``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from necklace.graph import GraphNeck, NeckGraph, input_name
from necklace.layers.resample import LEARNED_DOWN_MODES

__all__ = ["GraphLayout", "draw_graph", "graph_layout"]

_FORMATS = ("png", "svg", "pdf")
_XS, _YS = 2.3, 1.25  # column / row spacing (data units; 1 unit = _SCALE inches)
_BW, _BH = 1.6, 0.62  # node box size
_SCALE = 0.8
_BOX_COLORS = {"input": ("#dbe9f6", "#4a78a8"), "node": ("#ffffff", "#7a7a7a"), "output": ("#ffe2bf", "#d9822b")}
_EDGE_COLORS = {"up": "#2b6cb0", "down": "#c0392b", "same": "#555555"}


@dataclass(frozen=True)
class GraphLayout:
    """Grid positions of a graph's tensors: ``cells[name] = (column, level)``, plus the labelled edges.

    ``edges`` holds ``(source, target, label, direction)`` with direction ``up``/``down``/``same``.

    Example:
        >>> from necklace.necks import fpn_graph
        >>> lay = graph_layout(fpn_graph([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]))
        >>> lay.cells["C5"], lay.cells["L3"], lay.cells["P6"], lay.columns
        ((0, 5), (1, 3), (2, 6), 3)
        >>> [e for e in lay.edges if e[1] == "L4"]
        [('C4', 'L4', '1x1', 'same'), ('L5', 'L4', 'up x2 nearest', 'up')]
    """

    cells: dict[str, tuple[int, int]]
    edges: tuple[tuple[str, str, str, str], ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def columns(self) -> int:
        """Number of columns (backbone inputs are column 0)."""
        return max(c for c, _ in self.cells.values()) + 1

    @property
    def levels(self) -> tuple[int, int]:
        """``(finest, coarsest)`` level drawn."""
        lv = [lv for _, lv in self.cells.values()]
        return min(lv), max(lv)


def graph_layout(graph: NeckGraph | GraphNeck) -> GraphLayout:
    """Place every input and node of ``graph`` on a (column, level) grid and label its edges.

    A node goes to the first free column that is right of its same-level inputs and not left of its other
    inputs (nodes never share the inputs' column 0), in execution order.

    Example:
        >>> from necklace.necks import bifpn_graph
        >>> lay = graph_layout(bifpn_graph([FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)]))
        >>> lay.columns, lay.cells["r0_P4_td"], lay.cells["r0_P4_out"], lay.cells["r2_P7_out"]
        (8, (2, 4), (3, 4), (7, 7))
    """
    graph = _as_graph(graph)
    cells: dict[str, tuple[int, int]] = {}
    taken: set[tuple[int, int]] = set()
    inputs = tuple(input_name(s.level) for s in graph.in_specs)
    for s in graph.in_specs:
        cells[input_name(s.level)] = (0, s.level)
        taken.add((0, s.level))
    edges: list[tuple[str, str, str, str]] = []
    for node, plans, _ in graph.plan():
        col = 1
        for p in plans:
            src_col, src_level = cells[p.source]
            col = max(col, src_col + (1 if src_level == node.level else 0))
        while (col, node.level) in taken:
            col += 1
        cells[node.name] = (col, node.level)
        taken.add((col, node.level))
        for p in plans:
            ops = []
            if p.pre_act:
                ops.append(p.pre_act)
            learned_down = p.steps > 0 and p.down in LEARNED_DOWN_MODES
            if p.align or (not learned_down and p.in_channels != p.out_channels):
                ops.append("1x1")
            if p.steps > 0:
                ops.append(f"down /{2**p.steps} {p.down}")
            elif p.steps < 0:
                ops.append(f"up x{2**-p.steps} {p.up}")
            direction = "down" if p.steps > 0 else "up" if p.steps < 0 else "same"
            edges.append((p.source, node.name, "\n".join(ops), direction))
    return GraphLayout(cells=cells, edges=tuple(edges), inputs=inputs, outputs=tuple(graph.outputs))


def _as_graph(graph: Any) -> NeckGraph:
    if isinstance(graph, NeckGraph):
        return graph
    inner = getattr(graph, "graph", None)
    if isinstance(inner, NeckGraph):
        return inner
    raise TypeError(
        f"draw_graph needs a NeckGraph or a graph neck (with .graph), got {type(graph).__name__}. "
        "Necks that are not built from a graph cannot be drawn."
    )


def _import_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "drawing a neck graph needs matplotlib, which is not installed: pip install 'necklace[viz]'"
        ) from e
    return matplotlib


def _bezier(p0: tuple[float, float], c: tuple[float, float], p2: tuple[float, float], t: float) -> tuple[float, float]:
    a, b, d = (1 - t) ** 2, 2 * (1 - t) * t, t**2
    return (a * p0[0] + b * c[0] + d * p2[0], a * p0[1] + b * c[1] + d * p2[1])


def _route(
    a: tuple[float, float],
    b: tuple[float, float],
    boxes: list[tuple[float, float]],
    labels: list[tuple[float, float]],
    has_label: bool,
) -> tuple[float, tuple[float, float]]:
    """Pick the arc3 ``rad`` whose curve from ``a`` to ``b`` crosses the fewest node boxes and edge ``labels``
    already drawn (and, if ``has_label``, puts its own label away from them); return it and the label spot."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy)
    mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    nx, ny = dy / length, -dx / length  # matplotlib's arc3 bends towards +rad * (dy, -dx)
    best: tuple[float, float, tuple[float, float]] = (math.inf, 0.0, mid)
    for bow in (0.0, 0.42, -0.42, 0.62, -0.62, 0.85, -0.85):
        bow *= _YS
        ctrl = (mid[0] + 2 * bow * nx, mid[1] + 2 * bow * ny)
        hits = 0
        crossed: set[int] = set()
        for i in range(1, 40):
            x, y = _bezier(a, ctrl, b, i / 40)
            for bx, by in boxes:
                if abs(x - bx) < _BW / 2 + 0.05 and abs(y - by) < _BH / 2 + 0.05:
                    hits += 1
            for j, (lx, ly) in enumerate(labels):
                if abs(x - lx) < 0.45 and abs(y - ly) < 0.15:
                    crossed.add(j)
        label = _bezier(a, ctrl, b, 0.5)
        crowd = sum(1 for ux, uy in labels if abs(ux - label[0]) < 0.9 and abs(uy - label[1]) < 0.3) if has_label else 0
        score = hits * 10 + (crowd + len(crossed)) * 3 + abs(bow)
        if score < best[0]:
            best = (score, 2 * bow / length, label)
    return best[1], best[2]


def draw_graph(
    graph: NeckGraph | GraphNeck,
    path: str | Path,
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw ``graph`` (a :class:`NeckGraph` or a graph neck) to ``path`` (``.png``, ``.svg`` or ``.pdf``).

    The file is written atomically (temporary file, then rename). Returns the path written. Needs matplotlib
    (``pip install 'necklace[viz]'``); an ``ImportError`` says so when it is missing.

    Example:
        >>> import tempfile, pathlib
        >>> from necklace.necks import fpn_graph
        >>> g = fpn_graph([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32)
        >>> out = draw_graph(g, pathlib.Path(tempfile.mkdtemp()) / "fpn.png")
        >>> out.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    g = _as_graph(graph)
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(
            f"cannot draw to {str(path)!r}: use a file name ending in {', '.join('.' + f for f in _FORMATS)}."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist.")
    _import_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    lay = graph_layout(g)
    lo, hi = lay.levels
    pos = {n: (c * _XS, (lv - lo) * _YS) for n, (c, lv) in lay.cells.items()}
    left, right = -_XS * 0.75, (lay.columns - 1) * _XS + _BW / 2 + 0.3
    fig_w = (right - left) * _SCALE
    legend_cols = 6 if fig_w >= 12.5 else 3 if fig_w >= 8 else 2
    bottom = -_BH / 2 - {6: 1.0, 3: 1.3, 2: 1.6}[legend_cols]
    top = (hi - lo) * _YS + _BH / 2 + 0.75
    fig = Figure(figsize=((right - left) * _SCALE, (top - bottom) * _SCALE), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")

    nodes = {n.name: n for n in g.nodes}
    outputs = set(lay.outputs)
    patches = {}
    for name, (x, y) in pos.items():
        kind = "output" if name in outputs else "input" if name in lay.inputs else "node"
        face, edge = _BOX_COLORS[kind]
        box = FancyBboxPatch(
            (x - _BW / 2, y - _BH / 2),
            _BW,
            _BH,
            boxstyle="round,pad=0,rounding_size=0.1",
            facecolor=face,
            edgecolor=edge,
            linewidth=2.0 if kind == "output" else 1.0,
            zorder=3,
        )
        ax.add_patch(box)
        patches[name] = box
        if name in nodes:
            node = nodes[name]
            bits = [f"{node.channels}ch"]
            if len(node.edges) > 1:
                bits.append(node.fuse)
            if node.block != "identity":
                bits.append(node.block)
            detail = " · ".join(bits)
        else:
            spec = next(s for s in g.in_specs if input_name(s.level) == name)
            detail = f"{spec.channels}ch backbone"
        weight = "bold" if kind != "node" else "normal"
        ax.text(x, y + 0.11, name, ha="center", va="center", fontsize=8, fontweight=weight, zorder=4)
        ax.text(x, y - 0.14, detail, ha="center", va="center", fontsize=6, color="#333333", zorder=4)

    for level in range(lo, hi + 1):
        y = (level - lo) * _YS
        ax.axhline(y, color="#eeeeee", linewidth=0.8, zorder=0)
        ax.text(left + 0.15, y, f"P{level}\n/{2**level}", ha="left", va="center", fontsize=8, color="#555555")

    centers = list(pos.items())
    used: list[tuple[float, float]] = []
    for src, dst, label, direction in lay.edges:
        a, b = pos[src], pos[dst]
        others = [c for n, c in centers if n not in (src, dst)]
        rad, spot = _route(a, b, others, used, bool(label))
        color = _EDGE_COLORS[direction]
        arrow = FancyArrowPatch(
            a,
            b,
            patchA=patches[src],
            patchB=patches[dst],
            arrowstyle="-|>",
            mutation_scale=9,
            connectionstyle=f"arc3,rad={rad:.3f}",
            color=color,
            linewidth=1.0,
            shrinkA=1,
            shrinkB=1,
            zorder=2,
        )
        ax.add_patch(arrow)
        if label:
            used.append(spot)
            ax.text(
                spot[0],
                spot[1],
                label,
                ha="center",
                va="center",
                fontsize=5.5,
                color=color,
                zorder=5,
                bbox={"boxstyle": "round,pad=0.12", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
            )

    heading = title or "neck graph"
    heading += f"  ({len(g.nodes)} nodes, {len(lay.outputs)} outputs)"
    ax.text(left + 0.15, top - 0.35, heading, ha="left", va="center", fontsize=10, fontweight="bold")
    box_labels = {"input": "backbone input", "node": "node (channels · fuse · block)", "output": "output"}
    handles = [
        Patch(facecolor=face, edgecolor=edge, linewidth=2 if kind == "output" else 1, label=box_labels[kind])
        for kind, (face, edge) in _BOX_COLORS.items()
    ] + [
        Patch(color=_EDGE_COLORS["up"], label="upsample"),
        Patch(color=_EDGE_COLORS["down"], label="downsample"),
        Patch(color=_EDGE_COLORS["same"], label="same level (1x1 = channel alignment)"),
    ]
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 0.0),
        ncol=legend_cols,
        fontsize=6.5,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.2,
    )

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
