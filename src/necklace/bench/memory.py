"""Memory: peak bytes of new tensors a call holds at once (torch.profiler allocation events), and a train step."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


def peak_memory_bytes(fn: Callable[[], object]) -> dict[str, int]:
    """Peak bytes of tensors that one ``fn()`` allocates and holds at once in torch's CPU allocator.

    Read from ``torch.profiler`` (``profile_memory=True``) allocation/free events, matched by address: only
    blocks allocated during this call count, so the number is the peak of *new* tensor memory (activations
    kept for backward, temporaries, gradients, outputs) on top of whatever existed before (parameters, inputs;
    a train step that starts by setting ``.grad`` to None frees the old gradients first, so this is its peak
    beyond parameters + inputs). Memory that oneDNN or the Python heap allocate outside torch's allocator is
    not seen. ``retained_bytes``: what the call left allocated (e.g. its outputs, new ``.grad`` tensors);
    ``events``: how many allocation events were read (0 means nothing was measured).

    Example:
        >>> peak_memory_bytes(lambda: torch.zeros(1024, 256))["peak_bytes"]  # 1 MiB of float32
        1048576
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        trace = json.loads(Path(tmp).read_text())
    finally:
        os.unlink(tmp)
    events = [
        e["args"]
        for e in trace.get("traceEvents", [])
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0  # 0: CPU
    ]
    events.sort(key=lambda a: a.get("Ev Idx", 0))
    live: dict[int, int] = {}
    current = peak = 0
    for a in events:
        addr, nbytes = int(a["Addr"]), int(a["Bytes"])
        if nbytes > 0:
            live[addr] = nbytes
            current += nbytes
            peak = max(peak, current)
        elif addr in live:  # a free of a block allocated before this call is not ours
            current -= live.pop(addr)
    return {"peak_bytes": peak, "retained_bytes": current, "events": len(events)}


def train_step(
    module: nn.Module,
    feats: Sequence[torch.Tensor],
    call: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]] | None = None,
) -> Callable[[], None]:
    """A callable running one training step of a neck: grads set to None, ``module(feats)`` (or ``call(feats)``),
    backward of ``sum(out.sum())``. Inputs that require grad get gradients too, as backbone maps do.

    Example:
        >>> from necklace import build_neck
        >>> neck = build_neck("fpn", [(8, 8), (16, 16)], width=8)
        >>> feats = [torch.randn(1, 8, 8, 8, requires_grad=True), torch.randn(1, 16, 4, 4, requires_grad=True)]
        >>> train_step(neck, feats)()
        >>> feats[0].grad.shape
        torch.Size([1, 8, 8, 8])
    """
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        for f in feats:
            f.grad = None
        outs = module(list(feats)) if call is None else call(list(feats))
        loss = outs[0].sum()
        for o in outs[1:]:
            loss = loss + o.sum()
        loss.backward()

    return step
