"""The search space: the choices the search draws :class:`~necklace.necks.searched.Candidate` necks from
(:class:`SearchSpace`), and the hand-made necks that are always in the race (:func:`handmade_choices`).

A candidate is plain data (:meth:`Candidate.to_options`), so it goes wherever a registered neck goes:
``build_neck("searched", in_specs, **candidate.to_options())``, a :class:`~necklace.detection.train.TrainConfig`
(``neck="searched"``), a :class:`~necklace.detection.compare.NeckChoice`; and :meth:`Candidate.graph` gives the
:class:`~necklace.NeckGraph` to save as YAML for :meth:`necklace.GraphNeck.from_file`.

Example:
    >>> space = SearchSpace(templates=("fpn",), widths=(16,))
    >>> space.templates, [c.name for c in handmade_choices(("fpn", "pafpn"))]
    (('fpn',), ['fpn', 'pafpn'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from necklace.detection.compare import NeckChoice, default_neck_options
from necklace.necks.cells import Cell, nasfpn_cells
from necklace.necks.searched import (
    _MAX_LEVEL,
    _MIN_LEVEL,
    _STACKED,
    BLOCK_CHOICES,
    DOWNSAMPLE_CHOICES,
    FUSION_CHOICES,
    TEMPLATES,
    UPSAMPLE_CHOICES,
    Candidate,
    searched,
)
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
    "searched_neck",
]

#: the hand-made necks always in the race (``compare``'s names and defaults)
DEFAULT_HANDMADE = ("fpn", "pafpn", "bifpn", "yolo_pafpn")
#: ``build_neck("searched", ...)``'s builder, by the name the search package has used
searched_neck = searched


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

            from necklace.necks.cells import mutate_cells, panet_cells

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
