"""Export: every registered neck to ONNX with dynamic batch/height/width, run in onnxruntime at sizes other than
the export size (odd ones, floor-halved pyramids) and compared with PyTorch; TorchScript; deployment; the CLI;
error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import randomize_bn

import necklace
from necklace import FeatureSpec, GraphNeck, NeckGraph, Node
from necklace.cli import main
from necklace.export import ExportError, ExportReport, export_model, export_onnx, export_torchscript

SPECS = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
#: small widths / stacks so that each export takes a few seconds
OPTIONS: dict[str, dict[str, object]] = {
    "fpn": {"width": 16},
    "pafpn": {"width": 16},
    "bifpn": {"width": 16, "repeats": 2},
    "nasfpn": {"width": 16, "stack_times": 2},
    "augfpn": {"width": 16},
}
#: necks with an op whose output size is computed in Python from the input size: ONNX/TorchScript at one size only
STATIC_ONLY = {"augfpn": "RFA adaptive-pools the top map to int(h * ratio) bins, sizes computed in Python"}
NECKS = necklace.list_necks()
DYNAMIC_NECKS = [n for n in NECKS if n not in STATIC_ONLY]
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _neck(name: str, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    neck = necklace.build_neck(name, SPECS, **{**OPTIONS.get(name, {}), **extra})
    randomize_bn(neck)  # so that BN folding in deploy() is not a no-op
    return neck.eval()


def _pyramid(image: tuple[int, int], batch: int, halving: str = "ceil", seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = image
    size = (lambda n, s: math.ceil(n / s)) if halving == "ceil" else (lambda n, s: n // s)
    return [torch.randn(batch, s.channels, size(h, s.stride), size(w, s.stride), generator=g) for s in SPECS]


def _ort(path: Path):  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_ort(session, neck: torch.nn.Module, feats: list[torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    outs = session.run(None, {f"c{s.level}": f.numpy() for s, f in zip(SPECS, feats, strict=True)})
    with torch.no_grad():
        ref = neck(feats)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref, strict=True):
        torch.testing.assert_close(torch.from_numpy(o), r, **TOL)


@pytest.fixture(autouse=True)
def _needs_onnx() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")


# ------------------------------------------------------------------------------------------------ ONNX, dynamic
@pytest.mark.parametrize(
    ("name", "extra"),
    [(n, {}) for n in DYNAMIC_NECKS]
    + [("bifpn", {"padding": "same", "downsample": "avgpool", "fuse": "softmax", "repeats": 1})],
    ids=[*DYNAMIC_NECKS, "bifpn-tf-same"],
)
def test_onnx_dynamic_export_runs_at_other_sizes(name: str, extra: dict[str, object], tmp_path: Path) -> None:
    neck = _neck(name, **extra)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(neck, path, dynamic=True, image_size=(97, 131), second_image_size=(64, 80))
    assert path.is_file() and report.path == str(path)
    assert report.format == "onnx" and report.deployed and report.dynamic
    assert report.input_names == ("c3", "c4", "c5")
    assert report.output_names == tuple(f"p{s.level}" for s in neck.out_specs)
    assert report.input_shapes[0] == ("batch", 16, "h3", "w3")
    assert report.dynamic_axes["c5"] == {0: "batch", 2: "h5", 3: "w5"}
    assert (report.image_size, report.batch, report.second_image_size, report.second_batch) == (
        (97, 131),
        2,
        (64, 80),
        3,
    )
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.max_abs_diff_second is not None and report.max_abs_diff_second <= 1e-4

    session = _ort(path)
    assert [i.shape for i in session.get_inputs()] == [
        ["batch", s.channels, f"h{s.level}", f"w{s.level}"] for s in SPECS
    ]
    # other sizes than the two the export checked: odd, tiny (every level 1 pixel), batch 1, floor-halved maps
    _check_ort(session, neck, _pyramid((161, 97), batch=1))
    _check_ort(session, neck, _pyramid((33, 35), batch=1))
    _check_ort(session, neck, _pyramid((7, 9), batch=1))
    _check_ort(session, neck, _pyramid((100, 140), batch=2, halving="floor"))


def test_onnx_output_sizes_follow_the_ceil_rule_for_odd_images(tmp_path: Path) -> None:
    neck = _neck("fpn", levels=(3, 7))
    path = tmp_path / "fpn.onnx"
    report = export_onnx(neck, path, dynamic=True)
    assert report.output_shapes[-2:] == (
        ("batch", 16, "ceil(h5/2)", "ceil(w5/2)"),
        ("batch", 16, "ceil(h5/4)", "ceil(w5/4)"),
    )
    session = _ort(path)
    for image in ((97, 131), (64, 80), (129, 257)):
        outs = session.run(None, {f"c{s.level}": f.numpy() for s, f in zip(SPECS, _pyramid(image, 1), strict=True)})
        got = [tuple(o.shape[-2:]) for o in outs]
        assert got == [(math.ceil(image[0] / s.stride), math.ceil(image[1] / s.stride)) for s in neck.out_specs]


@pytest.mark.parametrize("name", sorted(STATIC_ONLY))
def test_static_only_necks_refuse_dynamic_export_and_export_at_one_size(name: str, tmp_path: Path) -> None:
    neck = _neck(name)
    path = tmp_path / f"{name}.onnx"
    with pytest.raises(ExportError, match=r"cannot be exported with dynamic height/width: torch.export fixed h5="):
        export_onnx(neck, path, dynamic=True)
    assert not path.exists(), f"{name} now exports dynamically: remove it from STATIC_ONLY ({STATIC_ONLY[name]})"
    report = export_onnx(neck, path, image_size=(97, 131))
    assert not report.dynamic and report.input_shapes[0] == (1, 16, 13, 17)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.max_abs_diff_second is None
    _check_ort(_ort(path), neck, _pyramid((97, 131), batch=1))
    second = tmp_path / f"{name}_64x80.onnx"  # a second size needs its own fixed-size export
    assert export_onnx(neck, second, image_size=(64, 80)).max_abs_diff <= 1e-4
    _check_ort(_ort(second), neck, _pyramid((64, 80), batch=1))
    with pytest.raises(ExportError, match=r"fails at image 64x80, batch 3"):
        export_torchscript(neck, tmp_path / f"{name}.pt", dynamic=True)


def test_static_export_fixes_the_shapes(tmp_path: Path) -> None:
    neck = _neck("pafpn")
    report = export_onnx(neck, tmp_path / "pafpn.onnx", image_size=(64, 96), batch=3)
    assert report.dynamic_axes == {} and report.second_image_size is None
    assert report.input_shapes == ((3, 16, 8, 12), (3, 32, 4, 6), (3, 64, 2, 3))
    assert report.output_shapes[-1] == (3, 16, 1, 2)
    assert _ort(tmp_path / "pafpn.onnx").get_inputs()[0].shape == [3, 16, 8, 12]


# ------------------------------------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", DYNAMIC_NECKS)
def test_torchscript_export_generalises_to_other_sizes(name: str, tmp_path: Path) -> None:
    neck = _neck(name)
    path = tmp_path / f"{name}.pt"
    report = export_torchscript(neck, path, dynamic=True, image_size=(97, 131))
    assert report.format == "torchscript" and report.opset is None
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.max_abs_diff_second is not None and report.max_abs_diff_second <= 1e-4
    loaded = torch.jit.load(str(path))
    for feats in (_pyramid((161, 97), batch=1), _pyramid((33, 35), batch=4)):
        with torch.no_grad():
            for a, b in zip(loaded(feats), neck(feats), strict=True):
                torch.testing.assert_close(a, b, **TOL)


def test_torchscript_trace_replays_the_example_branches(tmp_path: Path) -> None:
    """What the docstring says tracing cannot generalise: a map smaller than its level (floor-halved backbone,
    transposed-conv upsampling), which the trace crops instead of resizing; eager and ONNX resize it."""
    neck = _neck("fpn", upsample="transposed")
    feats = _pyramid((100, 140), batch=1, halving="floor")  # C4 6x8 -> 12x16 for the 12x17 C3 level
    export_torchscript(neck, tmp_path / "fpn.pt", dynamic=True, image_size=(97, 131))
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        torch.jit.load(str(tmp_path / "fpn.pt"))(feats)
    export_onnx(neck, tmp_path / "fpn.onnx", dynamic=True)
    _check_ort(_ort(tmp_path / "fpn.onnx"), neck, feats)


# ------------------------------------------------------------------------------------------------ deployment
def _rep_neck() -> GraphNeck:
    graph = NeckGraph(
        in_specs=SPECS,
        nodes=(
            Node("P5", 5, ("C5",), channels=16, block="repconv"),
            Node("P4", 4, ("C4", "P5"), channels=16, block="repconv"),
            Node("P3", 3, ("C3", "P4"), channels=16, block="repconv"),
            Node("N4", 4, ("P3", "P4"), channels=16, fuse="fast", block="repconv"),
            Node("N6", 6, ("P5",), channels=16, block="conv"),
        ),
        outputs=("P3", "N4", "P5", "N6"),
        conv=necklace.ConvCfg(norm="bn", act="relu"),
    )
    torch.manual_seed(0)
    neck = GraphNeck(graph)
    randomize_bn(neck)
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, necklace.layers.Fuse) and m.weight is not None:
                m.weight.uniform_(0.2, 1.5)
    return neck.eval()


def test_deployed_export_equals_the_original_eval_model(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    neck = _rep_neck()
    before = {k: v.clone() for k, v in neck.state_dict().items()}
    deployed = export_onnx(neck, tmp_path / "dep.onnx", dynamic=True)
    plain = export_onnx(neck, tmp_path / "plain.onnx", dynamic=True, deploy_first=False)
    assert deployed.deployed and not plain.deployed
    assert all(torch.equal(v, neck.state_dict()[k]) for k, v in before.items()), "export must not modify the model"
    nodes = {p: len(onnx.load(str(tmp_path / p)).graph.node) for p in ("dep.onnx", "plain.onnx")}
    assert nodes["dep.onnx"] < nodes["plain.onnx"]  # RepConv branches merged into one conv
    for name in ("dep.onnx", "plain.onnx"):
        session = _ort(tmp_path / name)
        for feats in (_pyramid((97, 131), batch=2), _pyramid((75, 53), batch=1)):
            _check_ort(session, neck, feats)
    ts = export_torchscript(neck, tmp_path / "dep.pt", dynamic=True)
    assert ts.deployed and ts.max_abs_diff_second is not None and ts.max_abs_diff_second <= 1e-4


def test_user_example_inputs_and_report_to_dict(tmp_path: Path) -> None:
    neck = _neck("fpn")
    feats = _pyramid((50, 70), batch=1)
    report = export_model(neck, tmp_path / "fpn.pt", format="torchscript", example_inputs=feats)
    assert report.image_size is None and report.input_shapes[0] == (1, 16, 7, 9)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["path"].endswith("fpn.pt") and data["output_names"] == ["p3", "p4", "p5", "p6"]
    text = report.describe()
    assert "p6" in text and "max |loaded file - torch| = 0" in text and "the example inputs" in text


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_format_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"unknown export format 'tflite'; choose one of \['onnx', 'openvino', 'torchscript'\]"
    ):
        export_model(_neck("fpn"), "x.tflite", format="tflite")


@pytest.mark.parametrize("deploy_first", [True, False])
def test_training_mode_model_is_refused(deploy_first: bool, tmp_path: Path) -> None:
    """Decision: export writes inference graphs only, so train mode is refused even with deploy_first=False
    (BatchNorm would be exported with batch statistics)."""
    neck = _neck("fpn").train()
    with pytest.raises(ValueError, match=r"training mode .* call model.eval\(\) first"):
        export_onnx(neck, tmp_path / "x.onnx", deploy_first=deploy_first)
    with pytest.raises(ValueError, match=r"export_torchscript: the model is in training mode"):
        export_torchscript(neck, tmp_path / "x.pt", deploy_first=deploy_first)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_directory_and_directory_as_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot write .*x.onnx'.* directory .*nope' does not exist"):
        export_onnx(_neck("fpn"), tmp_path / "nope" / "x.onnx")
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name"):
        export_torchscript(_neck("fpn"), tmp_path)


def test_model_without_in_specs_needs_example_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no in_specs; pass example_inputs"):
        export_onnx(torch.nn.Conv2d(3, 3, 1).eval(), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="example_inputs must be the list of feature maps"):
        export_onnx(_neck("fpn"), tmp_path / "x.onnx", example_inputs=torch.zeros(1, 16, 8, 8))  # type: ignore[arg-type]


def test_failed_check_writes_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "fpn.onnx"
    target.write_text("old")
    with pytest.raises(ExportError, match=r"differs from PyTorch at image 97x131, batch 1: output p3 .* nothing was"):
        export_onnx(_neck("fpn"), target, tolerance=-1.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_torchscript(_neck("fpn"), tmp_path / "fpn.pt", tolerance=-1.0)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fpn.onnx"]  # no temporary files left


def test_report_shape_of_dims() -> None:
    r = ExportReport("n.onnx", "onnx", ("c3",), ("p6",), (("batch", 8, "h3", "w3"),), (("batch", 8, "Min(h4, x)", 3),))
    assert "batch x 8 x (Min(h4, x)) x 3" in r.describe() and "not checked" in r.describe()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_export_onnx_dynamic_writes_a_file_onnxruntime_loads(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "fpn.onnx"
    argv = ["export", "fpn", "--in-channels", "16,32,64", "--width", "16", "--image-size", "65", "47", "--dynamic"]
    assert main([*argv, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnx opset" in text and "dynamic batch/height/width" in text and "ceil(h5/2)" in text
    assert "at image 65x47, batch 2" in text and "at image 64x80, batch 3" in text
    session = _ort(out)
    feats = _pyramid((161, 97), batch=1)
    outs = session.run(None, {f"c{s.level}": f.numpy() for s, f in zip(SPECS, feats, strict=True)})
    assert [o.shape for o in outs] == [(1, 16, 21, 13), (1, 16, 11, 7), (1, 16, 6, 4), (1, 16, 3, 2)]


def test_cli_export_torchscript_from_suffix_with_weights(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    neck = necklace.build_neck("fpn", SPECS, width=8)
    torch.save(neck.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "fpn.ts"
    argv = ["export", "fpn", "--in-channels", "16,32,64", "--width", "8", "--image-size", "64", "64"]
    assert main([*argv, "--no-deploy", "--weights", str(tmp_path / "w.pt"), "--output", str(out)]) == 0
    assert "torchscript, fixed shapes" in capsys.readouterr().out
    feats = _pyramid((64, 64), batch=1)
    with torch.no_grad():
        for a, b in zip(torch.jit.load(str(out))(feats), neck.eval()(feats), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["fpn", "--format", "tflite", "--output", "x.onnx"],
            "unknown --format 'tflite'; choose one of onnx, openvino, torchscript",
        ),
        (["fpn", "--output", "x.tflite"], "cannot tell the format of --output 'x.tflite' from its suffix"),
        (["fpn", "--output", "nope/x.onnx"], "cannot write 'nope/x.onnx': directory 'nope' does not exist"),
        (["fpn", "--opset", "17", "--output", "x.pt"], "--opset applies to --format onnx only"),
        (["--output", "x.onnx"], "give a neck NAME (see `necklace list`) or --graph FILE.yaml"),
        (["fpnn", "--output", "x.onnx"], "unknown neck 'fpnn'. Did you mean 'fpn'?"),
        (["augfpn", "--dynamic", "--output", "x.onnx"], "AugFPN cannot be exported with dynamic height/width"),
        (["fpn", "--weights", "none.pt", "--output", "x.onnx"], "weights file 'none.pt' not found"),
    ],
)
def test_cli_export_errors_are_one_line_with_status_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    specs = ["--in-channels", "16,32,64", "-o", "width=8"] if args[0] in ("fpn", "augfpn") else []
    assert main(["export", *args[:1], *specs, *args[1:], "--image-size", "33", "41"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("necklace: error: ")
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_openvino_ir_is_checked_and_written_atomically(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from necklace.export import export_openvino

    neck = necklace.build_neck("pafpn", [(16, 8), (32, 16), (64, 32)], width=8, norm="bn").eval()
    report = export_model(neck, tmp_path / "neck.xml", format="openvino", dynamic=True)
    assert report.format == "openvino" and report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert report.max_abs_diff_second is not None and report.second_image_size is not None  # checked at 2 sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neck.bin", "neck.xml"]  # nothing else left behind

    from necklace.deploy.ov import openvino_core  # (one Core per process: see its docstring)

    compiled = openvino_core().compile_model(str(tmp_path / "neck.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feats = [torch.randn(1, c, 40 // s, 56 // s) for c, s in ((16, 8), (32, 16), (64, 32))]
    out = compiled([f.numpy() for f in feats])
    with torch.no_grad():
        ref = neck(feats)
    for port, r in zip(compiled.outputs, ref, strict=True):
        assert np.allclose(out[port], r.numpy(), atol=1e-4 * max(1.0, float(r.abs().max())))
    with pytest.raises(ValueError, match=r"OpenVINO IR is an .xml file"):
        export_openvino(neck, tmp_path / "neck.onnx")


def test_cli_exports_openvino_from_the_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "neck.xml"
    argv = ["export", "fpn", "--in-channels", "16,32,64", "--width", "8", "--image-size", "64", "64", "--output"]
    assert main([*argv, str(out)]) == 0
    text = capsys.readouterr().out
    assert "openvino" in text and "check: max |loaded file - torch|" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neck.bin", "neck.xml"]
