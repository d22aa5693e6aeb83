"""``necklace.integrations.mmdet``: necklace necks in MMDetection / MMYOLO detectors built from configs.

Detectors come from the config files mmdet / mmyolo ship (``<package>/.mim/configs``), shrunk (ResNet-18, width
64, few classes, no pretrained weights: ``init_cfg=None``) so that a training step takes about a second on CPU.
With ``mmcv-lite`` (no compiled ops) ``mmdet.models`` imports through necklace's test shim
(:func:`necklace.bench.peers.install_mmcv_ext_shim`); the inference test with NMS needs the compiled ops and runs only
where the full mmcv is installed (marker ``mmcv_full``).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("mmdet")
pytest.importorskip("mmengine")
pytest.importorskip("mmcv")

HAS_MMCV_OPS = importlib.util.find_spec("mmcv._ext") is not None
if not HAS_MMCV_OPS:  # mmcv-lite: mmdet.models imports mmcv.ops, whose compiled ops no training step calls
    from necklace.bench.peers import install_mmcv_ext_shim

    install_mmcv_ext_shim()

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS as ROOT_MODELS  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

import necklace.integrations.mmdet as nmm  # noqa: E402
from necklace.integrations.mmdet import convert_checkpoint  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mmdet.md"
TOL = 1e-5
WIDTH = 64
NUM_CLASSES = 4


# --------------------------------------------------------------------------- helpers
def configs_dir(package: str) -> Path:
    """The config files ``package`` (mmdet / mmyolo) ships: ``<package>/.mim/configs``."""
    return Path(str(importlib.import_module(package).__file__)).parent / ".mim" / "configs"


def shipped_config(package: str, rel: str) -> Config:
    """A config file shipped with ``package``, read with mmengine's ``Config.fromfile``."""
    return Config.fromfile(configs_dir(package) / rel)


def build(model_cfg: Any, scope: str = "mmdet") -> nn.Module:
    """Build a detector from its config dict in ``scope`` (what mmengine's Runner does)."""
    registry = importlib.import_module(f"{scope}.registry").MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(copy.deepcopy(model_cfg))


def small_resnet(model: Any) -> None:
    """ResNet-50 -> ResNet-18 without pretrained weights, narrow neck and head, few classes."""
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.update(in_channels=[64, 128, 256, 512], out_channels=WIDTH)
    model.bbox_head.update(in_channels=WIDTH, feat_channels=WIDTH, num_classes=NUM_CLASSES)


def retinanet_fpn() -> Any:
    model = shipped_config("mmdet", "retinanet/retinanet_r18_fpn_1x_coco.py").model
    small_resnet(model)
    return model


def retinanet_pafpn() -> Any:
    model = retinanet_fpn()
    model.neck.type = "PAFPN"  # mmdet's PAFPN takes FPN's arguments
    return model


def fcos_fpn() -> Any:
    model = shipped_config("mmdet", "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py").model
    small_resnet(model)
    return model


def retinanet_nasfpn() -> Any:
    model = shipped_config("mmdet", "nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py").model
    small_resnet(model)
    model.neck.stack_times = 2
    model.data_preprocessor.batch_augments = None  # the crop-640 config pads every batch to 640 x 640
    return model


def with_necklace_neck(model_cfg: Any) -> Any:
    """The same detector config with the mmdet neck swapped for its necklace equal (``from_mmdet``)."""
    cfg = copy.deepcopy(model_cfg)
    cfg.neck = dict(type="necklace.Neck", from_mmdet=cfg.neck, strides=[4, 8, 16, 32])
    return cfg


def det_batch(model: nn.Module, size: tuple[int, int] = (128, 128), n: int = 2) -> dict[str, Any]:
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(n, [(3, *size)] * n, num_items=[3, 2][:n], num_classes=NUM_CLASSES, with_mask=False)
    return model.data_preprocessor(packed, True)  # type: ignore[operator]


def train_step(model: nn.Module, data: dict[str, Any], optim: torch.optim.Optimizer) -> dict[str, float]:
    """Forward + loss + backward + one optimiser step; returns the loss terms."""
    model.train()
    losses = model(**data, mode="loss")
    loss, log = model.parse_losses(losses)  # type: ignore[operator]
    optim.zero_grad()
    loss.backward()
    optim.step()
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in log.items()}


def assert_losses_equal(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= TOL * max(1.0, abs(a[k])), (k, a[k], b[k])


# --------------------------------------------------------------------------- registry
def test_type_resolves_from_mmdet_mmengine_and_mmyolo_scopes() -> None:
    pytest.importorskip("mmyolo")
    cfg = dict(type="necklace.Neck", name="fpn", in_channels=[16, 32, 64], strides=[8, 16, 32], width=8)
    for scope in ("mmdet", "mmyolo", "mmengine"):
        neck = build(cfg, scope)
        assert type(neck) is nmm.NecklaceNeck, scope
        assert [s.stride for s in neck.out_specs] == [8, 16, 32, 64]
    # mmyolo's MODELS is a sibling of mmdet's (both children of mmengine's root): a module registered into
    # mmdet's registry alone would not resolve from mmyolo's scope; the necklace scope hangs off the root
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmyolo.registry import MODELS as MMYOLO_MODELS

    assert MMYOLO_MODELS.parent is ROOT_MODELS and MMDET_MODELS.parent is ROOT_MODELS
    assert ROOT_MODELS.children["necklace"].get("Neck") is nmm.NecklaceNeck


def test_register_is_idempotent_and_refuses_a_foreign_entry() -> None:
    registry = nmm.register()
    assert nmm.register() is registry and registry.get("Neck") is nmm.NecklaceNeck
    saved = dict(vars(nmm))
    try:
        module = importlib.reload(nmm)  # a re-import replaces the entry with the reloaded class
        assert module.NecklaceNeck is not saved["NecklaceNeck"]
        assert ROOT_MODELS.get("necklace.Neck") is module.NecklaceNeck
    finally:  # back to the classes other tests (and the doctests) hold
        vars(nmm).update(saved)
        registry.register_module(name="Neck", module=nmm.NecklaceNeck, force=True)
    assert ROOT_MODELS.get("necklace.Neck") is saved["NecklaceNeck"]

    class Foreign(nn.Module):
        pass

    registry.register_module(name="Neck", module=Foreign, force=True)
    try:
        with pytest.raises(ValueError, match=r"already registered to .*Foreign"):
            nmm.register()
    finally:
        registry.register_module(name="Neck", module=nmm.NecklaceNeck, force=True)
    assert ROOT_MODELS.get("necklace.Neck") is nmm.NecklaceNeck


def test_version_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    assert nmm.check_versions()["mmdet"] == real("mmdet")
    monkeypatch.setattr(importlib.metadata, "version", lambda pkg: "2.28.2" if pkg == "mmdet" else real(pkg))
    with pytest.raises(ImportError, match=r"supports mmdet>=3\.0\.0,<4\.0\.0; mmdet 2\.28\.2 is installed"):
        nmm.check_versions()

    def missing(pkg: str) -> str:
        raise importlib.metadata.PackageNotFoundError(pkg)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ImportError, match=r"needs mmengine>=0\.7\.1,<1\.0\.0, which is not installed"):
        nmm.check_versions()


# --------------------------------------------------------------------------- mmdet detectors: train, equal losses
SWAPS = {
    "retinanet_fpn": retinanet_fpn,
    "fcos_fpn": fcos_fpn,
    "retinanet_pafpn": retinanet_pafpn,
    "retinanet_nasfpn": retinanet_nasfpn,
}


@pytest.mark.parametrize("case", list(SWAPS))
def test_mmdet_neck_swapped_for_necklace_gives_equal_losses(case: str) -> None:
    """mmdet's FPN / PAFPN / NAS-FPN and the necklace neck built from the same config, with the mmdet weights
    loaded through the necklace neck's converting loader: equal losses before and after one SGD step."""
    model_cfg = SWAPS[case]()
    torch.manual_seed(0)
    ref = build(model_cfg)
    ref.init_weights()
    ours = build(with_necklace_neck(model_cfg))
    assert isinstance(ours.neck, nmm.NecklaceNeck)
    assert not any(k.startswith("neck.necklace") for k in ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)  # mmdet neck keys are converted while loading
    nmm.check_head(ours)
    data = det_batch(ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in ours.state_dict().items() if k.startswith("neck.")}
    for _ in range(2):  # the second step's losses also compare the gradients of the first
        assert_losses_equal(train_step(ref, data, opt_ref), train_step(ours, data, opt_ours))
    changed = [k for k, v in ours.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, "the optimiser step did not change the necklace neck"


def test_retinanet_with_bifpn_trains_and_checks_the_head() -> None:
    model_cfg = retinanet_fpn()
    model_cfg.neck = dict(
        type="necklace.Neck",
        name="bifpn",
        in_channels=[64, 128, 256, 512],
        strides=[4, 8, 16, 32],
        width=WIDTH,
        repeats=1,
        levels=(3, 7),
        out_channels=WIDTH,
        num_outs=5,
        out_strides=[8, 16, 32, 64, 128],
    )
    torch.manual_seed(0)
    model = build(model_cfg)
    nmm.check_head(model)
    # Runner calls init_weights(): necklace's own initialisation stays unless the neck's init_cfg says otherwise
    neck_before = {k: v.clone() for k, v in model.neck.state_dict().items()}
    head_before = model.bbox_head.retina_cls.bias.clone()
    model.init_weights()
    assert all(torch.equal(v, neck_before[k]) for k, v in model.neck.state_dict().items())
    assert not torch.equal(model.bbox_head.retina_cls.bias, head_before)  # the head's prior-probability bias
    xavier = build({**model_cfg, "neck": {**model_cfg.neck, "init_cfg": dict(type="Xavier", layer="Conv2d")}})
    weight = "necklace.nodes.P6_in.edges.0.align.conv.weight"
    xavier.neck.state_dict()[weight].zero_()
    xavier.init_weights()
    assert float(xavier.neck.state_dict()[weight].abs().sum()) > 0
    data = det_batch(model, (96, 160))
    feats = model.extract_feat(data["inputs"])
    assert isinstance(feats, tuple) and [tuple(f.shape[1:]) for f in feats] == [
        (WIDTH, 12, 20),
        (WIDTH, 6, 10),
        (WIDTH, 3, 5),
        (WIDTH, 2, 3),
        (WIDTH, 1, 2),
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first = train_step(model, data, opt)
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values()) and first["loss"] > 0
    grads = [p.grad for p in model.neck.parameters()]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


# --------------------------------------------------------------------------- mmyolo
def yolo_batch(model: nn.Module, size: int = 128) -> dict[str, Any]:
    """Two images and their boxes in mmyolo's collated form (``bboxes_labels``: batch index, label, x1 y1 x2 y2)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, size, size), generator=g, dtype=torch.uint8)
    boxes = torch.tensor(
        [[0, 1, 10.0, 12.0, 60.0, 70.0], [0, 3, 70.0, 20.0, 120.0, 90.0], [1, 0, 5.0, 5.0, 40.0, 100.0]]
    )
    return model.data_preprocessor({"inputs": images, "data_samples": {"bboxes_labels": boxes}}, True)  # type: ignore[operator]


def test_mmyolo_yolov8n_with_necklace_yolo_pafpn_trains() -> None:
    pytest.importorskip("mmyolo")
    cfg = shipped_config("mmyolo", "yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py")
    model_cfg = cfg.model
    model_cfg.neck = dict(
        type="necklace.Neck",
        name="yolo_pafpn",
        preset="n",
        in_channels=[64, 128, 256],
        strides=[8, 16, 32],
        out_channels=[64, 128, 256],
        num_outs=3,
    )
    torch.manual_seed(0)
    model = build(model_cfg, cfg.default_scope)
    assert cfg.default_scope == "mmyolo" and isinstance(model.neck, nmm.NecklaceNeck)
    nmm.check_head(model)
    data = yolo_batch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.neck.parameters()]
    losses = train_step(model, data, opt)
    assert {"loss_cls", "loss_bbox", "loss_dfl"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and losses["loss_bbox"] > 0
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.neck.parameters(), strict=True))
    assert moved > len(before) // 2, f"only {moved} of {len(before)} neck tensors changed in the step"


# --------------------------------------------------------------------------- the documented configs
def doc_configs() -> dict[str, str]:
    """The config files in docs/mmdet.md (```python blocks with a _base_), by their first comment's file name."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    configs = {}
    for block in blocks:
        if "_base_" in block:
            name = re.match(r"# (\S+\.py)", block)
            assert name, f"a config block in {DOCS.name} does not start with '# <file>.py':\n{block}"
            configs[name.group(1)] = block
    return configs


def test_docs_has_the_three_configs() -> None:
    assert sorted(doc_configs()) == [
        "retinanet_r50_bifpn_1x_coco.py",
        "retinanet_r50_fpn_necklace.py",
        "yolov8_n_p2_syncbn_fast_8xb16-500e_coco.py",
    ]


@pytest.mark.parametrize("name", sorted(doc_configs()) if DOCS.is_file() else [])
def test_docs_config_builds_and_trains(name: str, tmp_path: Path) -> None:
    """Each documented config is read by mmengine (custom_imports included), built and trained for one step."""
    if "mmyolo::" in doc_configs()[name]:
        pytest.importorskip("mmyolo")
    text = doc_configs()[name]
    for package in ("mmdet", "mmyolo"):  # mmengine resolves "pkg::" through pkg_resources (setuptools < 81 only)
        if f'"{package}::' in text:
            text = text.replace(f'"{package}::', f'"{configs_dir(package)}/')
    path = tmp_path / name
    path.write_text(text)
    cfg = Config.fromfile(path)
    model_cfg = cfg.model
    assert model_cfg.neck.type == "necklace.Neck"
    model_cfg.backbone.init_cfg = None  # no pretrained weights in tests
    torch.manual_seed(0)
    model = build(model_cfg, cfg.default_scope)
    nmm.check_head(model)
    n_out = len(model.neck.out_specs)
    if cfg.default_scope == "mmyolo":
        assert [s.stride for s in model.neck.out_specs] == [4, 8, 16, 32]
        data = yolo_batch(model, 64)
    else:
        assert [s.stride for s in model.neck.out_specs] == [8, 16, 32, 64, 128]
        data = det_batch(model, (128, 128))  # BiFPN P7 is 1 x 1 here: train-mode BN needs two images
    assert len(model.extract_feat(data["inputs"])) == n_out
    losses = train_step(model, data, torch.optim.SGD(model.parameters(), lr=0.001))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    if "from_mmdet" in doc_configs()[name]:
        assert model.neck.neck_name == "fpn" and cfg.load_from.endswith(".pth")


# --------------------------------------------------------------------------- errors: neck vs backbone vs head
NECK = dict(type="necklace.Neck", name="fpn", in_channels=[16, 32, 64], strides=[8, 16, 32], width=8)
BAD_NECKS = {
    "in_channels_vs_strides": (
        dict(in_channels=[16, 32]),
        ValueError,
        r"in_channels \[16, 32\] has 2 entries but strides \[8, 16, 32\] has 3; give one stride per backbone map",
    ),
    "strides_missing": (dict(strides=None), TypeError, r"needs strides: the backbone maps it receives, e.g."),
    "strides_skip_a_level": (dict(strides=[8, 16, 64]), ValueError, r"strides \[8, 16, 64\]: .*successive powers"),
    "strides_not_powers_of_two": (dict(strides=[8, 12, 24]), ValueError, "stride 12 is not a power of two"),
    "in_channels_not_ints": (dict(in_channels="64"), TypeError, "in_channels must be a non-empty list of positive"),
    "num_outs": (dict(num_outs=5), ValueError, r"gives 4 maps \(strides \[8, 16, 32, 64\]\) but num_outs=5"),
    "out_channels": (
        dict(out_channels=256),
        ValueError,
        r"channels \[8, 8, 8, 8\]\) but out_channels=256 \(what the head reads",
    ),
    "out_channels_per_level": (dict(out_channels=[8, 8, 8]), ValueError, r"but out_channels=\[8, 8, 8\]"),
    "out_strides": (dict(out_strides=[8, 16, 32, 64, 128]), ValueError, r"but out_strides=\[8, 16, 32, 64, 128\]"),
    "name_typo": (dict(name="bifpm"), ValueError, r"unknown neck 'bifpm'. Did you mean 'bifpn'\?"),
    "name_missing": (dict(name=None), TypeError, r"needs name= \(one of augfpn, bifpn, .*\) or from_mmdet="),
    "fpn_option_leaked": (dict(start_level=1), TypeError, r"start_level.*; its options: width, levels"),
    "from_mmdet_and_options": (
        dict(name=None, from_mmdet=dict(type="FPN", in_channels=[16, 32, 64], out_channels=8, num_outs=4)),
        ValueError,
        r"from_mmdet sets the neck's options itself; got also \['width'\]",
    ),
    "from_mmdet_unknown": (
        dict(name=None, width=None, from_mmdet=dict(type="HRFPN", in_channels=[16, 32, 64], out_channels=8)),
        ValueError,
        "from_mmdet type 'HRFPN' has no necklace equivalent here; supported: FPN, PAFPN, NASFPN",
    ),
}


@pytest.mark.parametrize("case", list(BAD_NECKS))
def test_bad_neck_config_is_refused_with_the_fix(case: str) -> None:
    change, error, match = BAD_NECKS[case]
    cfg = {**NECK, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None or k in ("strides", "name")}
    with pytest.raises(error, match=match):
        build(cfg)


def test_backbone_maps_that_do_not_match_in_channels_are_named() -> None:
    neck = build(NECK)
    feats = [torch.randn(1, c, 32 // s * 4, 32 // s * 4) for c, s in ((8, 4), (16, 8), (32, 16), (64, 32))]
    with pytest.raises(
        ValueError, match=r"got 4 maps with channels \[8, 16, 32, 64\] from the backbone; .*out_indices"
    ):
        neck(tuple(feats))
    with pytest.raises(ValueError, match=r"got 3 maps with channels \[8, 16, 32\] .* in_channels \[16, 32, 64\]"):
        neck(tuple(feats[:3]))
    assert [tuple(o.shape[1:]) for o in neck(tuple(feats[1:]))] == [(8, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]


def test_detector_whose_head_disagrees_with_the_neck() -> None:
    model_cfg = retinanet_fpn()
    bifpn = dict(type="necklace.Neck", name="bifpn", in_channels=[64, 128, 256, 512], strides=[4, 8, 16, 32])
    # without the optional checks the detector builds, and check_head names both sides
    model = build({**model_cfg, "neck": {**bifpn, "width": 32, "repeats": 1, "levels": (3, 7)}})
    with pytest.raises(ValueError, match=r"bbox_head reads maps with 64 channels but .* gives channels \[32, 32"):
        nmm.check_head(model)
    model = build({**model_cfg, "neck": {**bifpn, "width": WIDTH, "repeats": 1, "levels": (3, 6)}})
    with pytest.raises(ValueError, match=r"strides \[8, 16, 32, 64, 128\] but .* gives 4 maps at strides \[8, 16"):
        nmm.check_head(model)
    # with them, building the detector stops at the neck
    with pytest.raises(ValueError, match=r"gives 4 maps .* but num_outs=5"):
        build({**model_cfg, "neck": {**bifpn, "width": WIDTH, "repeats": 1, "levels": (3, 6), "num_outs": 5}})
    with pytest.raises(TypeError, match=r"whose \.neck is a necklace\.Neck neck, got FPN"):
        nmm.check_head(build(model_cfg))


# --------------------------------------------------------------------------- checkpoints
class NotATensor:
    """A pickled object that ``torch.load(weights_only=True)`` refuses."""


def trained_pair(model_cfg: Any) -> tuple[nn.Module, nn.Module, Any]:
    """An mmdet detector with initialised weights, and its twin with the necklace neck (weights not loaded)."""
    torch.manual_seed(0)
    ref = build(model_cfg)
    ref.init_weights()
    twin_cfg = with_necklace_neck(model_cfg)
    return ref, build(twin_cfg), twin_cfg


def features_equal(a: nn.Module, b: nn.Module, data: dict[str, Any]) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        fa, fb = a.extract_feat(data["inputs"]), b.extract_feat(data["inputs"])
    assert len(fa) == len(fb) == 5
    for x, y in zip(fa, fb, strict=True):
        assert x.shape == y.shape and float((x - y).abs().max()) <= TOL


def test_convert_checkpoint_file_and_load_from(tmp_path: Path) -> None:
    ref, ours, twin_cfg = trained_pair(retinanet_fpn())
    src = tmp_path / "retinanet_fpn.pth"
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(1)}}, "param_groups": [{"lr": 0.01, "params": [0]}]}
    torch.save(
        {
            "meta": {"epoch": 12, "dataset_meta": {"classes": ("a", "b")}},
            "state_dict": ref.state_dict(),
            "optimizer": optimizer,
        },
        src,
    )
    dst = tmp_path / "converted" / "retinanet_necklace.pth"
    result = convert_checkpoint(src, twin_cfg.neck, out=dst)
    assert dst.is_file() and sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no temporary left
    assert "optimizer" not in result and result["meta"]["epoch"] == 12
    assert result["meta"]["necklace"] == {"converted_from": "mmdet FPN", "neck": "fpn", "prefix": "neck."}
    new, old = result["state_dict"], ref.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("neck."))
    assert all(k.startswith("neck.necklace.") for k in new if k.startswith("neck."))
    load_checkpoint(ours, str(dst), strict=True)  # what Runner's load_from does
    data = det_batch(ref)
    features_equal(ref, ours, data)
    # the original mmdet file loads straight into the necklace model too (converted while loading)
    _, direct, _ = trained_pair(retinanet_fpn())
    load_checkpoint(direct, str(src), strict=True)
    features_equal(ref, direct, data)
    # a bare state dict in, a bare state dict out; PAFPN and NAS-FPN checkpoints too
    for make in (retinanet_pafpn, retinanet_nasfpn):
        ref2, ours2, _ = trained_pair(make())
        converted = convert_checkpoint(ref2.state_dict(), ours2.neck)
        ours2.load_state_dict(converted, strict=True)
        features_equal(ref2, ours2, data)


def test_convert_checkpoint_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _, twin_cfg = trained_pair(retinanet_fpn())
    neck_cfg = twin_cfg.neck
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        convert_checkpoint(missing, neck_cfg)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read checkpoint '{re.escape(str(garbage))}'"):
        convert_checkpoint(garbage, neck_cfg)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": ref.state_dict(), "meta": NotATensor()}, pickled)
    with pytest.raises(ValueError, match="if you trust the file, pass weights_only=False"):
        convert_checkpoint(pickled, neck_cfg)
    assert (
        "neck.necklace.nodes.P3.block.conv.weight"
        in convert_checkpoint(pickled, neck_cfg, weights_only=False)["state_dict"]
    )
    a_list = tmp_path / "list.pth"
    torch.save([1, 2], a_list)
    with pytest.raises(ValueError, match=f"'{re.escape(str(a_list))}' holds a list"):
        convert_checkpoint(a_list, neck_cfg)
    with pytest.raises(ValueError, match=r"no mmdet FPN / PAFPN / NASFPN keys under 'neck.' \(found modules none"):
        convert_checkpoint({"backbone.conv1.weight": torch.zeros(1)}, neck_cfg)
    converted = convert_checkpoint(ref.state_dict(), neck_cfg)
    with pytest.raises(ValueError, match=r"found modules \['necklace'\].*already-converted"):
        convert_checkpoint(converted, neck_cfg)
    with pytest.raises(ValueError, match=r"is an mmdet PAFPN, which does not map onto .* from_mmdet=<that PAFPN"):
        convert_checkpoint(trained_pair(retinanet_pafpn())[0].state_dict(), neck_cfg)
    with pytest.raises(TypeError, match="neck must be a NecklaceNeck or its config dict"):
        convert_checkpoint(converted, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"is an mmdet FPN, which does not map onto necklace\.Neck"):
        build(
            dict(type="necklace.Neck", name="fpn", in_channels=[64, 128, 256, 512], strides=[4, 8, 16, 32], width=WIDTH)
        ).load_state_dict({k[5:]: v for k, v in ref.state_dict().items() if k[:5] == "neck."})
    # a failed write leaves the previous file and no temporary
    dst = tmp_path / "out.pth"
    dst.write_bytes(b"previous")

    def broken_save(obj: object, f: Any) -> None:
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(ref.state_dict(), neck_cfg, out=dst)
    assert (
        dst.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )


# --------------------------------------------------------------------------- inference with NMS
def predictions_equal_to_mmdet_fpn() -> None:
    """RetinaNet ``test_step`` (pre-processing, forward, decoding, NMS) with mmdet's FPN and with the necklace
    neck converted from it: the same detections."""
    from mmdet.testing import demo_mm_inputs

    model_cfg = retinanet_fpn()
    model_cfg.test_cfg.update(score_thr=0.0, nms_pre=200, max_per_img=50)  # random weights: keep low scores
    ref, ours, _ = trained_pair(model_cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)  # (the plain necklace neck runs mmdet's arithmetic)
    packed = demo_mm_inputs(2, [(3, 128, 160)] * 2, num_items=[3, 2], num_classes=NUM_CLASSES, with_mask=False)
    ref.eval()
    ours.eval()
    with torch.no_grad():
        got, want = ours.test_step(packed), ref.test_step(packed)
    for g, w in zip(got, want, strict=True):
        pg, pw = g.pred_instances, w.pred_instances
        assert len(pw) > 0 and len(pg) == len(pw)
        assert torch.equal(pg.labels, pw.labels)
        assert float((pg.scores - pw.scores).abs().max()) <= TOL
        assert float((pg.bboxes - pw.bboxes).abs().max()) <= 1e-3


@pytest.mark.mmcv_full
def test_inference_with_nms_equals_mmdet_fpn() -> None:
    pytest.importorskip("mmcv._ext")  # the compiled ops of the full mmcv (mmcv-lite has none)
    predictions_equal_to_mmdet_fpn()


def test_inference_with_a_torchvision_nms_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same comparison anywhere: mmcv's compiled ``nms`` replaced, for this test only, by torchvision's."""
    import torchvision

    class Ext:
        @staticmethod
        def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
            assert offset == 0, "torchvision's nms has no +1 box offset"
            return torchvision.ops.nms(boxes, scores, float(iou_threshold))

    monkeypatch.setattr(importlib.import_module("mmcv.ops.nms"), "ext_module", Ext())
    predictions_equal_to_mmdet_fpn()


def test_docs_error_messages_are_real() -> None:
    """The two ```text errors in docs/mmdet.md are what the RetinaNet BiFPN neck says (whitespace aside)."""
    shown = [" ".join(b.split()) for b in re.findall(r"```text\n(.*?)```", DOCS.read_text(), re.S)]
    neck = dict(name="bifpn", in_channels=[256, 512, 1024, 2048], strides=[4, 8, 16, 32], levels=(3, 7))
    with pytest.raises(ValueError) as no_width:
        nmm.NecklaceNeck(**neck, repeats=1, out_channels=256)
    with pytest.raises(ValueError) as c3_c5_only:
        nmm.NecklaceNeck(**neck, repeats=1, width=8)(tuple(torch.zeros(1, c, 1, 1) for c in (512, 1024, 2048)))
    assert shown == [f"ValueError: {no_width.value}", f"ValueError: {c3_c5_only.value}"]
