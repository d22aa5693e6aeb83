"""Equality of two sets of outputs, the calls that time a pair, and the deployed forms of both sides."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from necklace.bench.peers.pairs import DEPLOY_TOL, NO_PEER_DEPLOY, TOL, Call, Pair


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[float, float]:
    """``(max |a - b|, max |b|)`` over equally shaped tensor lists (raises ``AssertionError`` on shape mismatch).

    Example:
        >>> max_abs_diff([torch.ones(2)], [torch.full((2,), 3.0)])
        (2.0, 3.0)
    """
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))
    scale = max(float(y.float().abs().max()) for y in b)
    return diff, scale


def equality(got: Sequence[Tensor], ref: Sequence[Tensor], tol: float = TOL) -> dict[str, Any]:
    """``max_abs_diff``, ``max_abs_output`` (of ``ref``), ``tolerance`` (``tol * max(1, max |ref|)``) and
    ``equal`` (the difference within the tolerance)."""
    diff, scale = max_abs_diff(got, ref)
    return {
        "max_abs_diff": diff,
        "max_abs_output": scale,
        "tolerance": tol * max(1.0, scale),
        "equal": diff <= tol * max(1.0, scale),
    }


def bind(pair: Pair, module: nn.Module | None = None) -> Call:
    """The pair's peer (or ``module``, e.g. its deployed copy) as a ``feats -> outputs`` callable."""
    assert pair.call is not None and pair.peer_module is not None
    c, m = pair.call, pair.peer_module if module is None else module
    return lambda f: c(m, f)


def eval_call(module: nn.Module, call: Call | None, feats: list[Tensor]) -> Callable[[], object]:
    """A no-argument callable running ``module`` (or ``call``, when given) on a fresh list of ``feats``, no_grad."""

    def run() -> object:
        with torch.no_grad():
            return module(list(feats)) if call is None else call(list(feats))

    return run


def parity(pair: Pair, feats: list[Tensor]) -> dict[str, Any]:
    """:func:`equality` of the necklace outputs with the peer's (tolerance :data:`TOL`; the plain necklace neck runs
    torch's own ops, so on direct convs this is usually exact), plus ``out_shapes``."""
    assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
    with torch.no_grad():
        ref = pair.call(pair.peer_module, list(feats))
        got = pair.necklace(list(feats))
    return {**equality(got, ref), "out_shapes": [list(t.shape) for t in got]}


def deploy_necklace(pair: Pair, feats: list[Tensor], runtime: str = "native") -> tuple[nn.Module, dict[str, Any]]:
    """``necklace.deploy(runtime=...)`` of the pair's necklace neck (a copy, checked on ``feats``) and the
    :func:`equality` of its outputs with the eager peer's, tolerance :data:`DEPLOY_TOL` (folding and the runtimes'
    kernels change the rounding)."""
    from necklace.deploy import deploy

    assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
    module = deploy(pair.necklace, list(feats), runtime=runtime, rtol=DEPLOY_TOL)
    with torch.no_grad():
        eq = equality(module(list(feats)), pair.call(pair.peer_module, list(feats)), DEPLOY_TOL)
    return module, eq


def deploy_peer(pair: Pair, feats: list[Tensor]) -> tuple[nn.Module, dict[str, Any]]:
    """The peer's own deployment form (``pair.peer_deploy`` on a copy) and the :func:`equality` of its outputs
    with the eager peer's (tolerance :data:`TOL`). ``ValueError`` when the peer has no deployment form."""
    if pair.peer_deploy is None:
        raise ValueError(f"{pair.peer}: {NO_PEER_DEPLOY}")
    assert pair.peer_module is not None and pair.call is not None
    module = pair.peer_deploy(copy.deepcopy(pair.peer_module))
    module.eval()  # not chained: mmyolo's necks override train() and return None
    with torch.no_grad():
        eq = equality(pair.call(module, list(feats)), pair.call(pair.peer_module, list(feats)))
    return module, eq
