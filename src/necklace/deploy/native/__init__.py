"""The native CPU runtime: necklace's own inference kernels, applied as declared rewrites of the blocks they speed up.

``necklace.deploy(model, runtime="native")`` runs the torch runtime's steps (re-parameterise, fold BatchNorm,
freeze fusion weights), then :func:`apply_native`:

1. :func:`~necklace.deploy.native.loader.build` finds (verified) or compiles the C library of the Winograd
   transforms and loads it; the report says which, or why not (then the pure-torch forms run);
2. every module whose exact type has an entry in :data:`~necklace.deploy.native.modules.NATIVE_MODULES` is
   replaced by its native form (same parameters), and every :class:`~necklace.graph.GraphNeck` by a
   :class:`~necklace.deploy.native.nodes.NativeGraphNeck` whose nodes take the routes their structure allows;
3. with ``channels_last`` (the default), weights and the necks' inputs go to ``torch.channels_last``.

The same model always gets the same structure (nothing is chosen by timing); what each native conv runs (native
Winograd, the pure-torch Winograd or the direct conv) follows fixed rules of its input's shape, measured once and
written down in :mod:`necklace.deploy.native.winograd`. Details and numbers: ``docs/native.md``.

Example:
    >>> import torch, necklace
    >>> neck = necklace.build_neck("yolo_pafpn", [(64, 8), (128, 16), (256, 32)]).eval()
    >>> fast = necklace.deploy(neck, runtime="native")
    >>> type(fast).__name__, fast.deploy_report.runtime, fast.deploy_report.max_rel_diff < 1e-3
    ('NativeGraphNeck', 'native', True)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from necklace.deploy.native.loader import NativeBuild, build
from necklace.deploy.native.modules import NATIVE_MODULES, native_module
from necklace.deploy.native.nodes import NativeGraphNeck, native_graph_neck, use_channels_last
from necklace.graph.engine import GraphNeck

__all__ = ["NativeBuild", "NativeReport", "apply_native", "build"]


@dataclass(frozen=True)
class NativeReport:
    """What :func:`apply_native` did: the library ``build`` report, ``rewritten`` (native class name -> count) and
    whether the model runs ``channels_last``.

    Example:
        >>> off = NativeBuild(False, None, None, None, None, 0.0, "off")
        >>> r = NativeReport(build=off, rewritten={"NativeConvNormAct": 3}, channels_last=True)
        >>> r.total
        3
    """

    build: NativeBuild
    rewritten: dict[str, int] = field(default_factory=dict)
    channels_last: bool = True

    @property
    def total(self) -> int:
        """How many modules were rewritten."""
        return sum(self.rewritten.values())


def _rewrite(module: nn.Module, counts: Counter[str]) -> nn.Module:
    """Bottom-up: children first (a block's native form may read its children's), then the module itself."""
    for name, child in list(module.named_children()):
        new = _rewrite(child, counts)
        if new is not child:
            setattr(module, name, new)
    if type(module) is GraphNeck:
        new = native_graph_neck(module)
        counts[type(new).__name__] += 1
        counts.update(type(n).__name__ for n in new.nodes.values() if type(n).__name__ == "NativeNode")
        return new
    if type(module) in NATIVE_MODULES:
        new = native_module(module)
        if new is not module:
            counts[type(new).__name__] += 1
        return new
    return module


def apply_native(model: nn.Module, channels_last: bool = True) -> tuple[nn.Module, NativeReport]:
    """Rewrite ``model`` (already deployed by the torch runtime, in ``eval()``) into its native form; returns the
    new root module (a new object where the root itself was rewritten) and the report. In place otherwise."""
    report = build()
    counts: Counter[str] = Counter()
    model = _rewrite(model, counts)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        for m in model.modules():
            if isinstance(m, NativeGraphNeck):
                use_channels_last(m, True)
    return model, NativeReport(report, dict(sorted(counts.items())), channels_last)
