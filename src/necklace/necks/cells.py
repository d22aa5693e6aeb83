"""Merging cells: NAS-FPN's building unit as plain data, the published cell list, and seeded mutations.

A merging cell reads two maps of a *pool* (the laterals of levels ``lo..hi``, then the output of every earlier
cell), brings both to its own level, fuses them with ``sum`` or NAS-FPN's global-pooling attention ``gp``
(``x2 + sigmoid(GAP(x2)) * x1``) and, optionally, refines the result with a block. A neck's outputs are the last
pool entry at each level. :func:`cell_nodes` turns such a list into graph nodes; :func:`nasfpn_cells` gives the
published architecture (Ghiasi et al., 2019) for five levels and :func:`panet_cells` a top-down + bottom-up chain
for any number of levels; :func:`mutate_cells` changes a list in small seeded steps (the opt-in free space of
:mod:`necklace.detection.search.space`).

Example:
    >>> cells = nasfpn_cells(3, 7)
    >>> len(cells), cells[0]
    (9, Cell(a=3, b=1, level=4, op='gp', refine=True))
    >>> import random
    >>> child = mutate_cells(cells, 3, 7, random.Random(0), steps=2)
    >>> child != cells and all(c.a < 5 + i and c.b < 5 + i for i, c in enumerate(child))
    True
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from necklace.graph import Edge, Node
from necklace.necks.nasfpn import NASFPN_CELLS

__all__ = ["CELL_OPS", "Cell", "cell_nodes", "cells_from_data", "mutate_cells", "nasfpn_cells", "panet_cells"]

#: fusions a merging cell may use (NAS-FPN's binary ops)
CELL_OPS = ("sum", "gp")


@dataclass(frozen=True)
class Cell:
    """One merging cell: pool entries ``a`` and ``b`` fused by ``op`` at ``level``, then refined when ``refine``.

    Pool entries ``0..L-1`` are the laterals of levels ``lo..hi`` (in that order); entry ``L + i`` is the output of
    cell ``i``, so a cell may only read entries below its own.

    Example:
        >>> Cell(0, 1, level=3, op="sum").to_list()
        [0, 1, 3, 'sum', True]
    """

    a: int
    b: int
    level: int
    op: str = "sum"
    refine: bool = True

    def __post_init__(self) -> None:
        for name in ("a", "b", "level"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Cell.{name} must be a non-negative int, got {v!r}.")
        if self.op not in CELL_OPS:
            raise ValueError(f"Cell.op {self.op!r}: choose one of {list(CELL_OPS)}.")
        if not isinstance(self.refine, bool):
            raise TypeError(f"Cell.refine must be a bool, got {type(self.refine).__name__}.")

    def to_list(self) -> list[Any]:
        """``[a, b, level, op, refine]`` (plain data for configs and YAML)."""
        return [self.a, self.b, self.level, self.op, self.refine]


def cells_from_data(data: Sequence[Any]) -> tuple[Cell, ...]:
    """Cells from plain data: ``[a, b, level, op, refine]`` lists, dicts of the fields, or :class:`Cell` objects.

    Example:
        >>> cells_from_data([[0, 1, 3, "gp", False], {"a": 2, "b": 5, "level": 4}])
        (Cell(a=0, b=1, level=3, op='gp', refine=False), Cell(a=2, b=5, level=4, op='sum', refine=True))
    """
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise TypeError(f"cells must be a list of [a, b, level, op, refine] lists, got {type(data).__name__}.")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, Cell):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(Cell(**dict(item)))
        elif isinstance(item, Sequence) and not isinstance(item, str) and 3 <= len(item) <= 5:
            out.append(Cell(*item))
        else:
            raise TypeError(f"cells[{i}] = {item!r}: expected [a, b, level, op, refine], a dict or a Cell.")
    return tuple(out)


def check_cells(cells: Sequence[Cell], lo: int, hi: int) -> None:
    """Raise ``ValueError`` when a cell reads a pool entry that does not exist yet or sits outside ``lo..hi``.

    Example:
        >>> check_cells([Cell(0, 9, 3)], 3, 5)
        Traceback (most recent call last):
        ...
        ValueError: cell 0 reads pool entry 9, but only entries 0..2 exist before it ...
    """
    n_lat = hi - lo + 1
    if not cells:
        raise ValueError(f"a merging-cell neck needs at least one cell (levels {lo}..{hi}); got none.")
    for i, c in enumerate(cells):
        for entry in (c.a, c.b):
            if entry >= n_lat + i:
                raise ValueError(
                    f"cell {i} reads pool entry {entry}, but only entries 0..{n_lat + i - 1} exist before it "
                    f"({n_lat} laterals for levels {lo}..{hi}, then one entry per earlier cell)."
                )
        if not lo <= c.level <= hi:
            raise ValueError(f"cell {i} is at level {c.level}, outside the neck's levels {lo}..{hi}.")
        if c.a == c.b:
            raise ValueError(f"cell {i} reads pool entry {c.a} twice; a merging cell fuses two different maps.")


def _pool_levels(cells: Sequence[Cell], lo: int, hi: int) -> list[int]:
    return [*range(lo, hi + 1), *(c.level for c in cells)]


def nasfpn_cells(lo: int, hi: int) -> tuple[Cell, ...]:
    """The published NAS-FPN cells (:data:`necklace.necks.nasfpn.NASFPN_CELLS`) over the five levels ``lo..hi``.

    Example:
        >>> [c.level for c in nasfpn_cells(2, 6)]
        [3, 3, 2, 3, 4, 4, 6, 6, 5]
    """
    if hi - lo != 4:
        raise ValueError(f"NAS-FPN's published cells connect five levels; got levels {lo}..{hi}. Use ({lo}, {lo + 4}).")
    role_level = {f"p{3 + i}": lo + i for i in range(5)}
    current = {f"p{3 + i}": i for i in range(5)}  # role -> pool entry
    cells: list[Cell] = []
    for _name, fuse, x1, x2, out, with_conv in NASFPN_CELLS:
        cells.append(Cell(current[x1], current[x2], role_level[out[:2]], fuse, with_conv))
        current[out] = 5 + len(cells) - 1
    return tuple(cells)


def panet_cells(lo: int, hi: int) -> tuple[Cell, ...]:
    """A top-down then bottom-up chain of ``sum`` cells (PANet's wiring as merging cells), for any ``hi > lo``.

    Example:
        >>> [(c.a, c.b, c.level) for c in panet_cells(3, 5)]
        [(1, 2, 4), (0, 3, 3), (3, 4, 4), (2, 5, 5)]
    """
    if hi <= lo:
        raise ValueError(f"merging cells need at least two levels, got {lo}..{hi}.")
    latest = {lv: lv - lo for lv in range(lo, hi + 1)}
    cells: list[Cell] = []
    n = hi - lo + 1
    for lv in range(hi - 1, lo - 1, -1):
        cells.append(Cell(latest[lv], latest[lv + 1], lv))
        latest[lv] = n + len(cells) - 1
    for lv in range(lo + 1, hi + 1):
        cells.append(Cell(latest[lv], latest[lv - 1], lv))
        latest[lv] = n + len(cells) - 1
    return tuple(cells)


def _reindex_after_drop(cells: list[Cell], drop: int, n_lat: int) -> list[Cell]:
    """Remove cell ``drop``; readers of its output read its first input instead, later entries shift down."""
    gone = n_lat + drop
    repl = cells[drop].a

    def fix(e: int) -> int:
        e = repl if e == gone else e
        return e - 1 if e > gone else e

    out: list[Cell] = []
    for i, c in enumerate(cells):
        if i == drop:
            continue
        a, b = fix(c.a), fix(c.b)
        if a == b:  # both inputs collapsed onto one map: read the entry just before instead
            b = max(e for e in range(n_lat + len(out)) if e != a)
        out.append(Cell(a, b, c.level, c.op, c.refine))
    return out


def mutate_cells(
    cells: Sequence[Cell], lo: int, hi: int, rng: random.Random, steps: int = 1, max_cells: int = 16
) -> tuple[Cell, ...]:
    """``steps`` seeded random edits of a cell list: rewire an input, flip the op, move a cell one level, flip its
    refine block, drop a cell or append one (reading two random entries). The result always validates.

    Example:
        >>> a = mutate_cells(panet_cells(3, 5), 3, 5, random.Random(7), steps=3)
        >>> a == mutate_cells(panet_cells(3, 5), 3, 5, random.Random(7), steps=3)  # same seed, same child
        True
    """
    out = list(cells)
    check_cells(out, lo, hi)
    n_lat = hi - lo + 1
    for _ in range(steps):
        kinds = ["rewire", "op", "level", "refine", "append"]
        if len(out) > 1:
            kinds.append("drop")
        if len(out) >= max_cells:
            kinds.remove("append")
        kind = rng.choice(kinds)
        i = rng.randrange(len(out))
        c = out[i]
        if kind == "rewire":
            choices = [e for e in range(n_lat + i) if e not in (c.a, c.b)]
            if choices:
                new = rng.choice(choices)
                first = rng.random() < 0.5
                out[i] = Cell(new if first else c.a, c.b if first else new, c.level, c.op, c.refine)
        elif kind == "op":
            out[i] = Cell(c.a, c.b, c.level, "gp" if c.op == "sum" else "sum", c.refine)
        elif kind == "level":
            lv = min(hi, max(lo, c.level + rng.choice((-1, 1))))
            out[i] = Cell(c.a, c.b, lv, c.op, c.refine)
        elif kind == "refine":
            out[i] = Cell(c.a, c.b, c.level, c.op, not c.refine)
        elif kind == "drop":
            out = _reindex_after_drop(out, i, n_lat)
        else:
            pool = n_lat + len(out)
            a, b = rng.sample(range(pool), 2)
            out.append(Cell(a, b, rng.randint(lo, hi), rng.choice(CELL_OPS), True))
    result = tuple(out)
    check_cells(result, lo, hi)
    return result


def cell_nodes(
    cells: Sequence[Cell],
    lo: int,
    hi: int,
    widths: Mapping[int, int],
    lateral_names: Mapping[int, str],
    block: tuple[str, dict[str, Any]],
    upsample: str = "nearest",
    downsample: str = "maxpool",
    prefix: str = "m",
) -> tuple[list[Node], dict[int, str]]:
    """Graph nodes of ``cells`` (dead cells, whose output nothing reads and no level returns, are left out) and
    the output node of each level: the last pool entry at that level.

    ``lateral_names[level]`` names pool entries ``0..L-1`` (nodes or backbone inputs already in the graph);
    ``block`` is the ``(block, block_args)`` of refined cells (others keep the fused map, ``identity``); coarser
    inputs are resized by ``upsample``, finer ones by ``downsample``.

    Example:
        >>> nodes, outs = cell_nodes(panet_cells(3, 4), 3, 4, {3: 8, 4: 8}, {3: "L3", 4: "L4"}, ("conv", {}))
        >>> [n.name for n in nodes], outs
        (['m0', 'm1'], {3: 'm0', 4: 'm1'})
    """
    check_cells(cells, lo, hi)
    n_lat = hi - lo + 1
    levels = _pool_levels(cells, lo, hi)
    names = [lateral_names[lv] for lv in range(lo, hi + 1)] + [f"{prefix}{i}" for i in range(len(cells))]
    last: dict[int, int] = {}
    for entry, lv in enumerate(levels):
        last[lv] = entry
    live = set(last.values())
    for i in range(len(cells) - 1, -1, -1):  # backwards: a cell is live when a live cell (or an output) reads it
        if n_lat + i in live:
            live.update((cells[i].a, cells[i].b))
    nodes = []
    for i, c in enumerate(cells):
        if n_lat + i not in live:
            continue
        edges = []
        for entry in (c.a, c.b):
            src_level = levels[entry]
            if src_level > c.level:
                edges.append(Edge(names[entry], up=upsample))
            elif src_level < c.level:
                edges.append(Edge(names[entry], down=downsample))
            else:
                edges.append(Edge(names[entry]))
        kind, args = block if c.refine else ("identity", {})
        nodes.append(Node(names[n_lat + i], c.level, tuple(edges), widths[c.level], c.op, kind, dict(args)))
    return nodes, {lv: names[entry] for lv, entry in sorted(last.items())}
