"""Small helpers shared by the tests: input specs and random feature pyramids."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from necklace import FeatureSpec

#: Input specs the contract tests run every neck on (3 and 4 levels).
SPEC_SETS: dict[str, tuple[FeatureSpec, ...]] = {
    "c3c5": (FeatureSpec(24, 8), FeatureSpec(48, 16), FeatureSpec(96, 32)),
    "c2c5": (FeatureSpec(16, 4), FeatureSpec(24, 8), FeatureSpec(48, 16), FeatureSpec(96, 32)),
}

#: Image sizes: square and divisible, odd in both directions.
IMAGE_SIZES: dict[str, tuple[int, int]] = {"64x64": (64, 64), "97x131": (97, 131)}


def pyramid(specs: Sequence[FeatureSpec], image_size: tuple[int, int], batch: int = 2, seed: int = 0):
    """Random maps of size ceil(H/stride) x ceil(W/stride) per level, like a padded-conv backbone."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return [
        torch.randn(batch, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g) for s in specs
    ]


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def randomize_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random conv weights and biases, norm affine parameters and BN statistics (peers zero-init biases and start
    BN at identity, which would hide wiring mistakes), then ``eval()``."""
    g = torch.Generator().manual_seed(seed)
    nn = torch.nn
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                if isinstance(m, nn.BatchNorm2d):
                    assert m.running_mean is not None and m.running_var is not None
                    m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module.eval()


def spy_shapes(monkeypatch: Any, owner: Any, name: str, arg: int = 0) -> list[tuple[int, ...]]:
    """Wrap ``owner.name`` (a function) so every call records the shape of its positional argument ``arg``."""
    seen: list[tuple[int, ...]] = []
    real = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(args[arg].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def block_network(mp: Any) -> list[str]:
    """Refuse every non-local connection (DNS lookups and connects) through the ``pytest.MonkeyPatch`` ``mp``;
    returns the list every refused host / address is appended to."""
    import socket

    attempts: list[str] = []
    getaddrinfo = socket.getaddrinfo

    def local_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("localhost", "127.0.0.1", "::1", None):
            attempts.append(str(host))
            raise OSError("network blocked by the test")
        return getaddrinfo(host, *args, **kwargs)

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(str(address))
        raise OSError("network blocked by the test")

    mp.setattr(socket, "getaddrinfo", local_only)
    mp.setattr(socket.socket, "connect", refuse)
    return attempts


def trial_key(r: Any) -> tuple[Any, ...]:
    """What must match between two runs of a search: a trial record's number, kind, options, status, rungs, value."""
    rungs = tuple((d["step"], round(d["ap"], 6), round(d["ap_small"], 6)) for d in r.rungs)
    return (r.number, r.kind, r.label, json.dumps(r.options, sort_keys=True), r.status, r.pruned_at, rungs, r.value)


def assert_search_resumes(search: Any, cfg: Any, reference: Any, trial: int, folder: Any) -> None:
    """Interrupt ``search(cfg)`` (Ctrl-C) in trial ``trial`` after its first rung, then run it again: the rung
    checkpoint waits for the rerun, the rerun gives ``reference``'s trials, and the checkpoint is gone after."""
    import pytest

    stop = {"armed": True}

    def interrupt(number: int, rung: Any) -> None:
        if number == trial and rung.rung == 0 and stop["armed"]:
            stop["armed"] = False
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, progress=False, on_rung=interrupt)
    checkpoint = folder / "trials" / f"trial{trial}.pt"
    assert checkpoint.is_file()  # its rung checkpoint waits for the rerun
    resumed = search(cfg, progress=False)
    assert [trial_key(r) for r in resumed.records] == [trial_key(r) for r in reference.records]
    assert not checkpoint.exists()
