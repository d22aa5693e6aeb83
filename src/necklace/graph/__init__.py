"""The neck graph: typed topology as data (:mod:`necklace.graph.model`: :class:`Edge`, :class:`Node`,
:class:`NeckGraph`) and the one engine that runs it (:mod:`necklace.graph.engine`: :class:`GraphNeck`).

Example:
    >>> from necklace import FeatureSpec
    >>> g = NeckGraph(
    ...     in_specs=(FeatureSpec(16, 8), FeatureSpec(32, 16)),
    ...     nodes=(Node("P4", 4, ("C4",), channels=8), Node("P3", 3, ("C3", "P4"), channels=8, block="conv")),
    ...     outputs=("P3", "P4"),
    ... )
    >>> [s.stride for s in GraphNeck(g).out_specs]
    [8, 16]
"""

from necklace.graph.engine import GraphNeck
from necklace.graph.model import ALIGN_MODES, Edge, NeckGraph, Node, input_name

__all__ = ["ALIGN_MODES", "Edge", "GraphNeck", "NeckGraph", "Node", "input_name"]
