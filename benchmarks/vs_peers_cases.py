"""The configs of ``benchmarks/vs_peers.py`` (also read by ``profile_ops.py``): each groups necklace / peer pairs
of :mod:`necklace.bench.peers` (peer builders, weights carried over by ``necklace.convert``) with its image size and
input specs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from necklace import FeatureSpec
from necklace.bench import EFFICIENTNET_B0_C3_C5, RESNET50_C3_C5, default_in_specs, peers
from necklace.bench.peers import MMYOLO_FACTORS, R50_C2, Pair

R50 = RESNET50_C3_C5
B0 = EFFICIENTNET_B0_C3_C5


# the pairs (peer builders, weights carried over by necklace.convert) are necklace.bench.peers'; a case groups them
@dataclass
class Case:
    name: str
    title: str
    image_size: tuple[int, int]
    in_specs: tuple[FeatureSpec, ...]
    pairs: list[Pair]
    notes: list[str] = field(default_factory=list)


def _r50_fpn(size: tuple[int, int]) -> Case:
    pairs = [peers.torchvision_fpn_pair(R50, 256), peers.mmdet_pair("FPN", R50, 256)]
    return Case("r50_fpn", "R50-FPN P3-P5 (C3-C5 512/1024/2048 -> 256)", size, R50, pairs)


def _r50_fpn_p6p7(size: tuple[int, int]) -> Case:
    pairs = [
        peers.torchvision_fpn_pair(R50, 256, p6p7=True),
        peers.mmdet_pair("FPN", R50, 256, " (RetinaNet: P6/P7 convs on C5)", add_extra_convs="on_input", num_outs=5),
    ]
    return Case("r50_fpn_p6p7", "R50-FPN P3-P7 (C3-C5 -> 256, two stride-2 extra convs)", size, R50, pairs)


def _r50_pafpn(size: tuple[int, int]) -> Case:
    return Case("r50_pafpn", "R50-PAFPN P3-P5 (C3-C5 -> 256)", size, R50, [peers.mmdet_pair("PAFPN", R50, 256)])


def _bifpn_d0(size: tuple[int, int]) -> Case:
    case = Case(
        "bifpn_d0",
        "BiFPN-D0 (EfficientNet-B0 C3-C5 40/112/320 -> 64, 3 cells, P3-P7), eager vs eager",
        size,
        B0,
        [peers.effdet_bifpn_pair("tf_efficientdet_d0", B0, size)],
    )
    case.notes.append("necklace: bifpn preset d0, padding='same', redundant_bias=True (the tf_ port's layout)")
    return case


def _yolo(scale: str, version: str = "v8") -> Callable[[tuple[int, int]], Case]:
    """YOLOv8 (``yolo_pafpn``) or YOLO11 (``yolo11_pafpn``) neck of ``scale`` vs ultralytics' own, on the
    preset's backbone P3-P5."""
    neck = "yolo_pafpn" if version == "v8" else "yolo11_pafpn"
    model = f"yolov8{scale}" if version == "v8" else f"yolo11{scale}"
    make_pair = peers.ultralytics_yolov8_pair if version == "v8" else peers.ultralytics_yolo11_pair
    specs = default_in_specs(neck, {"preset": scale})

    def build(size: tuple[int, int]) -> Case:
        chans = "/".join(str(s.channels) for s in specs)
        case = Case(
            model, f"{model.upper()[:-1]}{scale} neck (P3-P5 {chans} in)", size, specs, [make_pair(scale, specs)]
        )
        case.notes.append(f"necklace: {neck} preset {scale}; ultralytics built from {model}.yaml")
        return case

    return build


def _yolov6(preset: str) -> Callable[[tuple[int, int]], Case]:
    widen = MMYOLO_FACTORS[preset][1]
    specs = peers.mmyolo_in_specs(preset)
    chans = "/".join(str(s.channels) for s in specs)

    def build(size: tuple[int, int]) -> Case:
        peers.check_divisible(f"yolov6{preset}", size, *peers.MMYOLO_DIVISIBLE)
        case = Case(
            f"yolov6{preset}",
            f"YOLOv6-{preset.upper()} RepPAN (P3-P5 {chans} in)",
            size,
            specs,
            [peers.mmyolo_reppafpn_pair(preset, specs)],
        )
        case.notes.append(
            f"necklace: rep_pafpn preset {preset}; mmyolo YOLOv6RepPAFPN as in its yolov6_{preset} config "
            f"(deepen {MMYOLO_FACTORS[preset][0]}, widen {widen}, RepVGGBlock, BN eps 1e-3, ReLU)"
        )
        return case

    return build


def _nasfpn(size: tuple[int, int]) -> Case:
    peers.check_divisible("nasfpn", size, *peers.NASFPN_DIVISIBLE)
    case = Case(
        "nasfpn",
        "NAS-FPN, RetinaNet config (C2-C5 256/512/1024/2048 in, start_level 1, 256 wide, P3-P7, 7 stacks, BN)",
        size,
        R50_C2,
        [peers.mmdet_nasfpn_pair(R50_C2, 256, stack_times=7, start_level=1)],
    )
    case.notes.append(
        "necklace: nasfpn width 256, stack_times 7, levels (3, 7), norm bn; mmdet NASFPN as in "
        "retinanet_r50_nasfpn_crop640-50e_coco.py (the C2 map is given, unused by both)"
    )
    return case


def _tiny_fpn(size: tuple[int, int]) -> Case:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    return Case(
        "tiny_fpn", "tiny FPN (16/32/64 -> 32) for smoke tests", size, specs, [peers.torchvision_fpn_pair(specs, 32)]
    )


CONFIGS: dict[str, tuple[Callable[[tuple[int, int]], Case], tuple[int, int], str]] = {
    "r50_fpn": (_r50_fpn, (640, 640), "R50 C3-C5 -> 256 FPN vs torchvision FeaturePyramidNetwork and mmdet FPN"),
    "r50_fpn_p6p7": (_r50_fpn_p6p7, (640, 640), "FPN P3-P7 vs torchvision + LastLevelP6P7, mmdet RetinaNet FPN"),
    "r50_pafpn": (_r50_pafpn, (640, 640), "R50 C3-C5 -> 256 PAFPN vs mmdet PAFPN"),
    "bifpn_d0": (_bifpn_d0, (512, 512), "BiFPN-D0 vs efficientdet-pytorch BiFpn (tf_efficientdet_d0)"),
    "yolov8n": (_yolo("n"), (640, 640), "yolo_pafpn n vs ultralytics YOLOv8n layers 10-21"),
    "yolov8s": (_yolo("s"), (640, 640), "yolo_pafpn s vs ultralytics YOLOv8s layers 10-21"),
    "yolo11n": (_yolo("n", "11"), (640, 640), "yolo11_pafpn n vs ultralytics YOLO11n layers 11-22"),
    "yolov6n": (_yolov6("n"), (640, 640), "rep_pafpn n vs mmyolo YOLOv6RepPAFPN (yolov6_n config; size % 32)"),
    "nasfpn": (_nasfpn, (640, 640), "nasfpn vs mmdet NASFPN (RetinaNet NAS-FPN, 7 stacks; heavy; size % 128)"),
    "tiny_fpn": (_tiny_fpn, (64, 64), "16/32/64 -> 32 FPN vs torchvision (smoke tests)"),
}
