"""Weight-for-weight parity of necklace's BiFPN with efficientdet-pytorch's ``BiFpn`` (random weights, no downloads).

effdet bakes every resample size into the module from ``config.image_size``, so each effdet module is built for
the size it is run at; the same necklace neck runs every size.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import necklace
from necklace import FeatureSpec
from necklace.convert.effdet import effdet_bifpn_key_map, from_effdet_bifpn, to_effdet_bifpn
from necklace.layers.fuse import Fuse

effdet = pytest.importorskip("effdet")
from effdet.config import get_efficientdet_config  # noqa: E402
from effdet.efficientdet import BiFpn  # noqa: E402

#: EfficientNet feature channels at strides 8/16/32 (timm ``features_only``, out_indices (2, 3, 4)).
BACKBONE_CHANNELS = {
    "b0": (40, 112, 320),
    "b1": (40, 112, 320),
    "b2": (48, 120, 352),
    "b3": (48, 136, 384),
    "b4": (56, 160, 448),
    "b5": (64, 176, 512),
    "b6": (72, 200, 576),
    "b7": (80, 224, 640),
}
PRESET_BACKBONE = {"d0": "b0", "d1": "b1", "d2": "b2", "d3": "b3", "d4": "b4", "d5": "b5", "d6": "b6", "d7": "b6"}
EFFDET_FUSE = {"bifpn_fa": "fast", "bifpn_attn": "softmax", "bifpn_sum": "sum"}
TOL = 1e-5


def _specs(channels: tuple[int, ...], min_level: int = 3) -> list[FeatureSpec]:
    return [FeatureSpec(c, 2 ** (min_level + i)) for i, c in enumerate(channels)]


def _effdet_cfg(name: str, image_size: tuple[int, int] | None = None, **overrides: object):
    cfg = get_efficientdet_config(name)
    if image_size is not None:
        cfg.image_size = image_size
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.num_levels = cfg.max_level - cfg.min_level + 1
    return cfg


def _effdet_bifpn(cfg, specs: list[FeatureSpec]) -> BiFpn:
    feature_info = [{"num_chs": s.channels, "reduction": s.stride} for s in specs]
    return BiFpn(cfg, copy.deepcopy(feature_info))


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """He-scaled conv weights, non-trivial BN affine/running stats and positive, unequal edge weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def _features(specs: list[FeatureSpec], image_size: tuple[int, int], batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return [
        torch.randn(batch, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g) for s in specs
    ]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _compare(ref: BiFpn, neck: nn.Module, feats: list[torch.Tensor]) -> tuple[float, float]:
    """Max abs difference over all levels and the max abs output (the scale it is relative to)."""
    ref.eval()
    neck.eval()
    with torch.no_grad():
        expected = ref(list(feats))  # effdet appends to the list it is given
        got = neck(list(feats))
    assert len(got) == len(expected)
    for e, o in zip(expected, got, strict=True):
        assert o.shape == e.shape
    diff = max((e - o).abs().max().item() for e, o in zip(expected, got, strict=True))
    scale = max(e.abs().max().item() for e in expected)
    return diff, scale


def _pair(name: str, image_size: tuple[int, int], seed: int = 0, **neck_options: object):
    """An effdet BiFpn for ``name`` with random weights, and the necklace neck loaded with them."""
    preset = name.rsplit("_", 1)[-1]
    specs = _specs(BACKBONE_CHANNELS[PRESET_BACKBONE[preset]])
    ref = _effdet_bifpn(_effdet_cfg(name, image_size), specs)
    _randomize(ref, seed)
    tf = name.startswith("tf_")
    options: dict[str, object] = {"preset": preset, "padding": "same" if tf else "symmetric", "redundant_bias": tf}
    options.update(neck_options)
    neck = necklace.build_neck("bifpn", specs, **options)
    neck.load_state_dict(from_effdet_bifpn(ref.state_dict(), neck))
    return ref, neck, specs


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "efficientdet_d0"])
def test_d0_outputs_match_effdet_512(name: str) -> None:
    ref, neck, specs = _pair(name, (512, 512))
    diff, scale = _compare(ref, neck, _features(specs, (512, 512)))
    assert diff <= TOL * max(1.0, scale), f"{name}: max abs diff {diff:.3g} (output scale {scale:.3g})"


@pytest.mark.parametrize("image_size", [(640, 384), (500, 333), (97, 131), (200, 72)])
@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "efficientdet_d0"])
def test_d0_outputs_match_effdet_other_sizes(name: str, image_size: tuple[int, int]) -> None:
    # non-square, not divisible by 128, odd; effdet's module is rebuilt per size, necklace's is not
    ref, neck, specs = _pair(name, image_size)
    diff, scale = _compare(ref, neck, _features(specs, image_size))
    assert diff <= TOL * max(1.0, scale), f"{name} {image_size}: max abs diff {diff:.3g} (scale {scale:.3g})"


def test_tf_d1_outputs_match_effdet() -> None:
    ref, neck, specs = _pair("tf_efficientdet_d1", (320, 256))
    diff, scale = _compare(ref, neck, _features(specs, (320, 256), batch=1))
    assert diff <= TOL * max(1.0, scale), f"max abs diff {diff:.3g} (scale {scale:.3g})"


def test_tf_weights_need_same_padding() -> None:
    """The check can fail: TF-ported weights run with symmetric pooling do not match effdet."""
    ref, neck, specs = _pair("tf_efficientdet_d0", (256, 192), padding="symmetric")
    diff, _ = _compare(ref, neck, _features(specs, (256, 192)))
    assert diff > 1e-3


@pytest.mark.parametrize(
    ("fpn_name", "min_level", "max_level", "n_inputs"),
    [
        ("bifpn_fa", 3, 6, 3),  # one extra level
        ("bifpn_fa", 2, 7, 4),  # stride-4 input too
        ("bifpn_fa", 4, 7, 2),  # two backbone levels, two extra
        ("bifpn_fa", 3, 5, 3),  # no extra level
        ("bifpn_attn", 3, 7, 3),  # softmax fusion
        ("bifpn_sum", 3, 7, 3),  # D6/D7 fusion
        ("bifpn_fa", 3, 8, 3),  # D7x level range
    ],
)
def test_variants_match_effdet(fpn_name: str, min_level: int, max_level: int, n_inputs: int) -> None:
    image_size = (160, 224)
    specs = _specs((24, 40, 112, 320)[-n_inputs:], min_level)
    cfg = _effdet_cfg(
        "tf_efficientdet_d0",
        image_size,
        fpn_name=fpn_name,
        min_level=min_level,
        max_level=max_level,
        fpn_channels=32,
        fpn_cell_repeats=2,
    )
    ref = _effdet_bifpn(cfg, specs)
    _randomize(ref, seed=3)
    neck = necklace.build_neck(
        "bifpn",
        specs,
        width=32,
        repeats=2,
        levels=(min_level, max_level),
        fuse=EFFDET_FUSE[fpn_name],
        padding="same",
        redundant_bias=True,
    )
    assert _n_params(neck) == _n_params(ref)
    neck.load_state_dict(from_effdet_bifpn(ref.state_dict(), neck))
    diff, scale = _compare(ref, neck, _features(specs, image_size))
    assert diff <= TOL * max(1.0, scale), f"max abs diff {diff:.3g} (scale {scale:.3g})"


def test_necklace_weights_load_into_effdet() -> None:
    specs = _specs(BACKBONE_CHANNELS["b0"])
    neck = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=True)
    _randomize(neck, seed=5)
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, Fuse) and m.weight is not None:
                m.weight.uniform_(0.25, 1.75)
    ref = _effdet_bifpn(_effdet_cfg("tf_efficientdet_d0", (256, 320)), specs)
    ref.load_state_dict(to_effdet_bifpn(neck))
    diff, scale = _compare(ref, neck, _features(specs, (256, 320)))
    assert diff <= TOL * max(1.0, scale)


# ------------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("name", "expected"),
    [("tf_efficientdet_d0", 196_281), ("efficientdet_d0", 194_361), ("tf_efficientdet_d1", 390_972)],
)
def test_parameter_counts(name: str, expected: int) -> None:
    preset = name.rsplit("_", 1)[-1]
    specs = _specs(BACKBONE_CHANNELS[PRESET_BACKBONE[preset]])
    ref = _effdet_bifpn(_effdet_cfg(name), specs)
    tf = name.startswith("tf_")
    neck = necklace.build_neck("bifpn", specs, preset=preset, padding="same" if tf else "symmetric", redundant_bias=tf)
    assert _n_params(ref) == expected
    assert _n_params(neck) == expected


@pytest.mark.parametrize("preset", sorted(PRESET_BACKBONE))
def test_every_preset_loads_strictly(preset: str) -> None:
    """D0..D7: same parameter count and a strict, shape-checked load (sizes do not matter for weights)."""
    specs = _specs(BACKBONE_CHANNELS[PRESET_BACKBONE[preset]])
    ref = _effdet_bifpn(_effdet_cfg(f"tf_efficientdet_{preset}", (128, 128)), specs)
    neck = necklace.build_neck("bifpn", specs, preset=preset, padding="same", redundant_bias=True)
    assert _n_params(neck) == _n_params(ref)
    sd = ref.state_dict()
    converted = from_effdet_bifpn(sd, neck)
    assert set(effdet_bifpn_key_map(neck).values()) == set(sd)
    neck.load_state_dict(converted)


# ----------------------------------------------------------------------------- state-dict plumbing, errors


def test_whole_efficientdet_state_dict_with_fpn_prefix() -> None:
    from effdet.efficientdet import EfficientDet

    cfg = _effdet_cfg("tf_efficientdet_d0", (256, 256))
    model = EfficientDet(cfg, pretrained_backbone=False).eval()
    _randomize(model.fpn, seed=7)
    specs = _specs(tuple(f["num_chs"] for f in model.backbone.feature_info.get_dicts()))
    neck = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=True)
    neck.load_state_dict(from_effdet_bifpn(model.state_dict(), neck))  # backbone/head keys are ignored
    diff, scale = _compare(model.fpn, neck, _features(specs, (256, 256), batch=1))
    assert diff <= TOL * max(1.0, scale)


def _d0_state_and_neck():
    specs = _specs(BACKBONE_CHANNELS["b0"])
    ref = _effdet_bifpn(_effdet_cfg("tf_efficientdet_d0"), specs)
    neck = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=True)
    return dict(ref.state_dict()), neck, specs


def test_missing_key_is_named() -> None:
    sd, neck, _ = _d0_state_and_neck()
    del sd["cell.1.fnode.3.combine.edge_weights"]
    with pytest.raises(ValueError, match=r"missing .*cell\.1\.fnode\.3\.combine\.edge_weights"):
        from_effdet_bifpn(sd, neck)


def test_unexpected_key_is_named() -> None:
    sd, neck, _ = _d0_state_and_neck()
    sd["cell.0.fnode.0.combine.resample.9.conv.conv.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"unexpected .*cell\.0\.fnode\.0\.combine\.resample\.9"):
        from_effdet_bifpn(sd, neck)


def test_shape_mismatch_is_named() -> None:
    sd, _, specs = _d0_state_and_neck()
    wider = necklace.build_neck("bifpn", specs, preset="d0", width=72, padding="same", redundant_bias=True)
    with pytest.raises(ValueError, match=r"shape mismatches .*resample\.3\.conv\.conv\.weight \(64, 320, 1, 1\)"):
        from_effdet_bifpn(sd, wider)


def test_redundant_bias_mismatch_is_reported() -> None:
    sd, _, specs = _d0_state_and_neck()
    plain = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=False)
    with pytest.raises(ValueError, match=r"unexpected .*conv_pw\.bias"):
        from_effdet_bifpn(sd, plain)


def test_missing_num_batches_tracked_is_tolerated() -> None:
    sd, neck, _ = _d0_state_and_neck()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    neck.load_state_dict(from_effdet_bifpn(sd, neck), strict=True)


def test_non_bifpn_neck_is_refused() -> None:
    fpn = necklace.build_neck("fpn", _specs((40, 112, 320)), width=64)
    with pytest.raises(ValueError, match="effdet's BiFpn layout"):
        effdet_bifpn_key_map(fpn)
    with pytest.raises(TypeError, match="GraphNeck"):
        effdet_bifpn_key_map(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
