"""necklace.integrations.ultralytics: necklace necks inside Ultralytics YOLOv8 / YOLO11, run by Ultralytics itself.

Built, trained, validated, saved, reloaded in a fresh process, resumed and exported (ONNX run in onnxruntime,
TorchScript, OpenVINO) on a tiny YOLO dataset written here; parity of ``from_ultralytics`` with the stock models
(outputs, loss, training); the errors are in ``test_integration_ultralytics_errors.py``. The whole module runs with
the network blocked (sockets refuse every non-local connection, in the subprocesses too) and checks that nothing
was downloaded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import necklace

ultralytics = pytest.importorskip("ultralytics")

import PIL.Image  # noqa: E402  (after ultralytics, which replaces PIL.Image.open at import; restored below)
from tests.helpers import block_network  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import yaml_model_load  # noqa: E402
from ultralytics.utils import WEIGHTS_DIR  # noqa: E402

from necklace.integrations.ultralytics import (  # noqa: E402
    NecklaceDetectionModel,
    NecklaceDetectionTrainer,
    NecklaceYOLO,
    build_yolo,
    from_ultralytics,
    synthetic_yolo_dataset,
    train_yolo,
)
from necklace.integrations.ultralytics.__main__ import main as cli_main  # noqa: E402
from necklace.integrations.ultralytics.model import NECK_ROW_MODULE  # noqa: E402

SRC = Path(necklace.__file__).resolve().parents[1]
IMGSZ = 64
#: what every training here shares: tiny, CPU, no plots, no AMP check (CPU), deterministic
TRAIN = {"imgsz": IMGSZ, "batch": 4, "workers": 0, "plots": False, "device": "cpu", "exist_ok": True}
#: (model YAML, neck, levels, options, layers the neck reads): YOLOv8n and YOLO11n with BiFPN, PAFPN and P2-P5
COMBOS = {
    "v8-bifpn": ("yolov8n.yaml", "bifpn", (3, 5), {"width": 32, "repeats": 1}, [4, 6, 9]),
    "v8-pafpn": ("yolov8n.yaml", "pafpn", (3, 5), {"width": 32}, [4, 6, 9]),
    "v8-yolo-p2": ("yolov8n.yaml", "yolo_pafpn", (2, 5), {}, [2, 4, 6, 9]),
    "v11-bifpn-p2": ("yolo11n.yaml", "bifpn", (2, 5), {"width": 32, "repeats": 1}, [2, 4, 6, 10]),
    "v11-pafpn": ("yolo11n.yaml", "pafpn", (3, 5), {"width": 32}, [4, 6, 10]),
    "v11-yolo-p2": ("yolo11n.yaml", "yolo11_pafpn", (2, 5), {}, [2, 4, 6, 10]),
}
#: hosts Ultralytics itself contacts (refused here): its online check at import (DNS) and the font check
#: (``check_font``, a HEAD request to github.com for Arial.ttf) inside every dataset check
ULTRALYTICS_PROBES = {"one.one.one.one", "dns.google", "github.com"}

# every subprocess starts with this: no network, Ultralytics offline
_NO_NETWORK = """
import os, socket
os.environ["YOLO_OFFLINE"] = "1"
def _refuse(*args, **kwargs):
    raise OSError("network blocked by the test")
_getaddrinfo = socket.getaddrinfo
def _local_only(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1", None):
        raise OSError("network blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _local_only
socket.socket.connect = _refuse
"""


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def network() -> Iterator[list[str]]:
    """Refuse every non-local connection for the whole module; record the hosts asked for."""
    weights_before = set(WEIGHTS_DIR.glob("*")) if WEIGHTS_DIR.exists() else set()
    pil_open = PIL.Image.open
    with pytest.MonkeyPatch.context() as mp:
        attempts = block_network(mp)
        yield attempts
    PIL.Image.open = pil_open  # type: ignore[assignment]
    weights_after = set(WEIGHTS_DIR.glob("*")) if WEIGHTS_DIR.exists() else set()
    assert weights_after == weights_before, f"weights were downloaded: {weights_after - weights_before}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 4 val 96x96 images of necklace's synthetic shapes (3 classes) as a YOLO dataset."""
    return synthetic_yolo_dataset(tmp_path_factory.mktemp("yolo_data"), num_train=8, num_val=4, image_size=96)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each combo of :data:`COMBOS` built and trained one epoch (2 steps) by Ultralytics' trainer."""
    project = tmp_path_factory.mktemp("runs")
    runs = {}
    for key, (model, neck, levels, options, _) in COMBOS.items():
        yolo = build_yolo(model, neck, levels=levels, **options)
        runs[key] = train_yolo(yolo, data, epochs=1, seed=0, project=project, name=key, **TRAIN)
    return runs


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory (Ultralytics exports YAML-built models into the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_python(code: str, timeout: int = 300) -> str:
    """Run ``code`` in a fresh interpreter (this checkout's necklace, network blocked); return its stdout."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)  # this checkout first
    env = {"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(
        {k: v for k, v in __import__("os").environ.items() if k in ("HOME", "XDG_CONFIG_HOME", "YOLO_CONFIG_DIR")}
    )
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _batch(n: int = 2, size: int = IMGSZ, nc: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A detection batch as Ultralytics' loss takes it: images in [0, 1] and normalised xywh boxes."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.25, 0.3, 0.2, 0.2], [0.7, 0.6, 0.4, 0.3]])
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[1.0], [2.0], [0.0]]) % nc,
        "bboxes": boxes,
    }


def _feats(out: Any) -> list[torch.Tensor]:
    """The per-level head maps of a train-mode forward / the raw part of an eval one: a dict with ``feats`` in
    Ultralytics 8.4, the list itself in 8.3."""
    return list(out["feats"] if isinstance(out, dict) else out)


def _with_args(model: Any) -> Any:
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()  # the loss's hyper-parameters (box / cls / dfl gains), as the trainer sets them
    return model


# ----------------------------------------------------------------------------------------------- building
@pytest.mark.parametrize(
    ("model", "neck", "levels", "options", "layers"),
    [
        ("yolov8n.yaml", "bifpn", (3, 5), {"width": 32, "repeats": 1}, [4, 6, 9]),
        ("yolov8n.yaml", "yolo_pafpn", (2, 5), {}, [2, 4, 6, 9]),
        ("yolov8n.yaml", "pafpn", (3, 6), {"width": 32}, [4, 6, 9]),
        ("yolo11n.yaml", "bifpn", (2, 5), {"width": 32, "repeats": 1}, [2, 4, 6, 10]),
        ("yolo11n.yaml", "fpn", (3, 6), {"width": 24}, [4, 6, 10]),
    ],
)
def test_build_reads_the_backbone_and_fits_detect_to_the_neck(
    model: str, neck: str, levels: tuple[int, int], options: dict, layers: list[int]
) -> None:
    yolo = build_yolo(model, neck, levels=levels, **options)
    m = yolo.model
    assert isinstance(yolo, NecklaceYOLO) and isinstance(m, NecklaceDetectionModel) and yolo.task == "detect"
    nb = len(yaml_model_load(model)["backbone"])
    layer, detect = m.model[nb], m.model[-1]
    strides = [2**lv for lv in range(levels[0], levels[1] + 1)]
    # the neck reads the last backbone layer at each stride; Detect has one input per neck output
    assert layer.f == layers and layer.i == nb and layer.type == f"necklace.{neck}"
    assert [s.stride for s in layer.out_specs] == strides and m.stride.tolist() == strides
    assert detect.nl == len(strides) and detect.f == [nb + 1 + k for k in range(len(strides))]
    assert [seq[0].conv.in_channels for seq in detect.cv2] == [s.channels for s in layer.out_specs]
    assert set(layers) <= set(m.save)
    # the model YAML keeps Ultralytics' rows: backbone unchanged, then the neck row, one Index per level, Detect
    head = m.yaml["head"]
    assert m.yaml["backbone"] == yaml_model_load(model)["backbone"]
    assert head[0][0] == layers and head[0][2] == NECK_ROW_MODULE and [r[2] for r in head[1:]][-1] == "Detect"
    assert m.yaml["necklace"]["neck"] == neck and m.yaml["necklace"]["levels"] == list(levels)
    # train-mode forward (what the loss reads): one map per level at ceil(64 / stride)
    feats = _feats(m.train()(torch.rand(2, 3, IMGSZ, IMGSZ)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(math.ceil(IMGSZ / s),) * 2 for s in strides]


def test_build_from_a_yolo_object_keeps_its_backbone_and_head_weights() -> None:
    stock = YOLO("yolov8n.yaml")
    yolo = build_yolo(stock, "bifpn", width=32, repeats=1)
    ours, theirs = yolo.model.state_dict(), stock.model.state_dict()
    backbone = [k for k in theirs if int(k.split(".")[1]) < 10]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    # Detect was layer 22, is layer 14 (neck, 3 Index); P3-P5 widths differ (BiFPN 32 vs 64/128/256): not copied
    assert not torch.equal(ours["model.14.cv2.0.0.conv.weight"][:, :32], theirs["model.22.cv2.0.0.conv.weight"][:, :32])
    same_widths = build_yolo(stock, "yolo_pafpn")  # the neck keeps YOLOv8n's widths: Detect is copied too
    sd = same_widths.model.state_dict()
    assert torch.equal(sd["model.14.cv3.2.2.weight"], theirs["model.22.cv3.2.2.weight"])
    fresh = build_yolo(stock, "bifpn", pretrained=False).model.state_dict()  # a new model with the same layout
    assert not torch.equal(fresh["model.0.conv.weight"], theirs["model.0.conv.weight"])


@pytest.mark.parametrize("name", necklace.list_necks())
def test_every_registered_neck_trains_a_step_inside_yolov8n(name: str) -> None:
    levels, options = (3, 5), {}
    if name in ("fpn", "pafpn", "augfpn"):
        options = {"width": 32}
    elif name == "bifpn":
        options = {"width": 32, "repeats": 1}
    elif name == "nasfpn":
        levels, options = (3, 7), {"width": 32, "stack_times": 1}  # its cell needs five levels
    elif name == "csp_pan":
        levels = (3, 6)  # it adds P6 by default
    m = _with_args(build_yolo("yolov8n.yaml", name, levels=levels, nc=3, **options).model.train())
    loss, items = m.loss(_batch())
    loss.sum().backward()
    assert torch.isfinite(loss).all() and loss.sum() > 0 and len(items) == 3  # box, cls, dfl
    grads = [p.grad for p in m.neck.parameters()]
    assert grads and sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


def test_build_from_a_graph_and_a_graph_file(tmp_path: Path) -> None:
    specs = [(64, 8), (128, 16), (256, 32)]  # YOLOv8n's P3-P5
    graph = necklace.build_neck("fpn", specs, width=16, levels=(3, 5)).graph
    a = build_yolo("yolov8n.yaml", graph)
    graph.save(tmp_path / "neck.yaml")
    b = build_yolo("yolov8n.yaml", tmp_path / "neck.yaml")
    assert a.model.yaml["necklace"]["graph"] == b.model.yaml["necklace"]["graph"] == graph.to_dict()
    assert a.model.neck.graph == graph and [s.channels for s in b.model.neck_layer.out_specs] == [16, 16, 16]
    p3p6 = necklace.build_neck("pafpn", specs, width=16, levels=(3, 6)).graph  # the graph decides the levels
    assert build_yolo("yolov8n.yaml", p3p6).model.stride.tolist() == [8.0, 16.0, 32.0, 64.0]


def test_checkpoint_load_keeps_out_of_place_activations(tmp_path: Path) -> None:
    """Ultralytics' load_checkpoint sets ``inplace=True`` on every module that has the flag; P7 = conv(relu(P6))
    must still not overwrite the P6 output it reads."""
    yolo = build_yolo("yolov8n.yaml", "fpn", levels=(3, 7), width=16, extra="conv", relu_before_extra=True)
    path = tmp_path / "fpn_p3p7.pt"
    yolo.save(path)  # Ultralytics stores the model in float16
    reference = yolo.model.half().float().eval()  # the same rounded weights, flags as built
    loaded = YOLO(path).model  # through load_checkpoint(inplace=True)
    flipped = [m for m in loaded.neck.modules() if isinstance(m, torch.nn.ReLU)]
    assert flipped and all(m.inplace for m in flipped)  # what load_checkpoint did
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = reference(x)[0], loaded.eval()(x)[0]
    assert torch.equal(want, got) and not any(m.inplace for m in flipped)


def test_model_yaml_file_round_trip(tmp_path: Path) -> None:
    yolo = build_yolo("yolo11n.yaml", "bifpn", levels=(2, 5), width=32, repeats=1)
    (tmp_path / "yolo11n-bifpn-p2.yaml").write_text(yaml.safe_dump(yolo.model.yaml, sort_keys=False))
    again = NecklaceYOLO(tmp_path / "yolo11n-bifpn-p2.yaml")
    assert again.model.yaml["necklace"] == yolo.model.yaml["necklace"]
    shapes = {k: v.shape for k, v in yolo.model.state_dict().items()}
    assert {k: v.shape for k, v in again.model.state_dict().items()} == shapes


# ----------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(("model", "neck"), [("yolov8n.yaml", "yolo_pafpn"), ("yolo11n.yaml", "yolo11_pafpn")])
def test_from_ultralytics_equal_outputs_and_loss(model: str, neck: str) -> None:
    stock = YOLO(model).model
    ours = from_ultralytics(stock).model
    assert ours.neck_layer.type == f"necklace.{neck}"
    stock.eval()
    ours.eval()
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (a, raw_a), (b, raw_b) = stock(x), ours(x)  # the plain necklace neck: the stock arithmetic, bit for bit
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(_feats(raw_a), _feats(raw_b), strict=True))
    # the same loss on a batch, and the same gradients
    stock, ours = _with_args(stock.train()), _with_args(ours.train())
    batch = _batch(size=96)
    (la, _), (lb, _) = stock.loss(batch), ours.loss(batch)
    assert torch.equal(la, lb) and float(la.detach().sum()) > 0
    la.sum().backward()
    lb.sum().backward()
    ga, gb = dict(stock.named_parameters()), dict(ours.named_parameters())
    detect_a, detect_b = len(stock.model) - 1, len(ours.model) - 1
    pairs = [(k, k) for k in ("model.0.conv.weight", "model.4.cv1.conv.weight")]
    pairs.append((f"model.{detect_a}.cv3.0.2.weight", f"model.{detect_b}.cv3.0.2.weight"))
    for key_a, key_b in pairs:  # equal up to the order autograd sums a map's gradients from its two readers
        grad_a, grad_b = ga[key_a].grad, gb[key_b].grad
        assert grad_a is not None and grad_b is not None
        assert float((grad_a - grad_b).abs().max()) <= 1e-5 * float(grad_a.abs().max()), key_a


@pytest.mark.slow
@pytest.mark.parametrize("model", ["yolov8n.yaml", "yolo11n.yaml"])
def test_from_ultralytics_trains_like_the_stock_model(model: str, data: Path, tmp_path: Path) -> None:
    """Ultralytics' trainer, same data, seed and schedule (2 epochs, 4 SGD steps) on the stock model and on its
    necklace twin. YOLOv8n: the same weights, bit for bit. YOLO11n: its C3k2 / C2PSA blocks read some maps three
    times, and autograd sums those gradients in another order in each model (~1e-7 relative); batch-of-4 BN
    training amplifies that over the steps, to ~1e-4 of the loss and < 1% of what the weights moved."""
    # Ultralytics draws a session id from Python's global `random` when its events module is first imported (8.3:
    # during the first training of a process), which would shift that run's augmentations: import it before both
    for name in ("ultralytics.utils.events", "ultralytics.hub.utils"):  # where it lives in 8.4 / older 8.3
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)
    cfg = yaml_model_load(model)
    cfg["nc"] = 3  # the data's classes: no class-head re-initialisation when training starts
    (tmp_path / model).write_text(yaml.safe_dump(cfg, sort_keys=False))
    YOLO(tmp_path / model).save(tmp_path / "stock.pt")  # both start from this checkpoint's weights
    stock, ours = YOLO(tmp_path / "stock.pt"), from_ultralytics(tmp_path / "stock.pt")
    init = {k: v.float().clone() for k, v in stock.model.state_dict().items()}
    sgd = {"optimizer": "SGD", "lr0": 0.01, "nbs": 4, "warmup_epochs": 0, "val": True}  # 2 optimizer steps/epoch
    runs = [
        train_yolo(m, data, epochs=2, seed=0, project=tmp_path, name=n, **{**TRAIN, "imgsz": 96}, **sgd)
        for m, n in ((stock, "stock"), (ours, "necklace"))
    ]
    curves = [[{k: v for k, v in row.items() if "loss" in k} for row in run.epochs] for run in runs]
    assert len(curves[0]) == 2 and len(curves[0][0]) == 6 and curves[0][0].keys() == curves[1][0].keys()
    trained = [run.model.trainer.model.state_dict() for run in runs]  # the live fp32 weights after 4 steps
    nb = len(cfg["backbone"])
    backbone = [k for k in init if int(k.split(".")[1]) < nb and init[k].is_floating_point()]
    moved = max(float((trained[0][k] - init[k]).abs().max()) for k in backbone)
    assert moved > 1e-2  # they did train
    if model.startswith("yolov8"):
        assert curves[0] == curves[1]
        assert all(torch.equal(trained[0][k], trained[1][k]) for k in backbone)
    else:
        for a, b in zip(*curves, strict=True):
            assert all(math.isclose(a[k], b[k], rel_tol=5e-4) for k in a), (a, b)
        assert max(float((trained[0][k] - trained[1][k]).abs().max()) for k in backbone) < 1e-2 * moved


# ------------------------------------------------------------------------------- train / val / save / export
@pytest.mark.slow
@pytest.mark.parametrize("key", list(COMBOS))
def test_trained_validated_and_exported_to_onnx(key: str, trained: dict[str, Any], data: Path) -> None:
    import onnxruntime as ort

    run = trained[key]
    _, neck, levels, _, layers = COMBOS[key]
    assert run.best is not None and run.last is not None and run.save_dir.is_dir()
    assert len(run.epochs) == 1 and {"train/box_loss", "val/box_loss"} <= set(run.epochs[0])
    assert set(run.metrics) == {f"metrics/{k}(B)" for k in ("precision", "recall", "mAP50", "mAP50-95")}
    assert all(0.0 <= v <= 1.0 for v in run.metrics.values())
    model = run.model  # Ultralytics reloaded best.pt into it after training
    assert isinstance(model, NecklaceYOLO) and isinstance(model.model, NecklaceDetectionModel)
    assert model.model.neck_layer.f == layers and model.model.names == {0: "rectangle", 1: "ellipse", 2: "triangle"}
    metrics = model.val(data=str(data), **{k: TRAIN[k] for k in ("imgsz", "batch", "plots", "device")})
    assert 0.0 <= metrics.box.map <= 1.0 and len(metrics.results_dict) == 5
    image = next((data.parent / "images" / "val").glob("*.png"))
    (result,) = model.predict(str(image), imgsz=IMGSZ, conf=0.0, verbose=False)
    assert result.boxes.data.shape[1] == 6 and len(result.boxes) > 0  # conf=0: the top detections are kept
    onnx_file = model.export(format="onnx", imgsz=IMGSZ)
    assert Path(onnx_file).is_file() and Path(onnx_file).parent == run.best.parent
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    torch_model = NecklaceYOLO(run.best).model.eval()
    with torch.no_grad():
        want = torch_model(x)[0].numpy()
    (got,) = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert got.shape == want.shape == (1, 4 + 3, sum((IMGSZ // 2**lv) ** 2 for lv in range(levels[0], levels[1] + 1)))
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max())), neck


@pytest.mark.slow
def test_checkpoints_reload_in_a_fresh_process(trained: dict[str, Any], data: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved.pt"
    trained["v8-bifpn"].model.save(saved)  # YOLO.save(): the in-memory model as a checkpoint
    files = {key: str(run.best) for key, run in trained.items()} | {"saved": str(saved)}
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    image = next((data.parent / "images" / "val").glob("*.png"))
    out = _run_python(
        f"""
        import json, torch
        from ultralytics import YOLO  # the stock class: loading needs no rebuild, only an importable necklace
        from necklace.integrations.ultralytics import NecklaceYOLO
        x = torch.load({str(tmp_path / "x.pt")!r})
        report = {{}}
        for key, path in {files!r}.items():
            stock, ours = YOLO(path), NecklaceYOLO(path)
            with torch.no_grad():
                a, b = stock.model.eval()(x)[0], ours.model.eval()(x)[0]
            torch.save(a, {str(tmp_path)!r} + f"/{{key}}.out.pt")
            report[key] = [type(stock.model).__name__, stock.model.neck_layer.type, bool(torch.equal(a, b))]
        # Ultralytics' stock class predicts, validates and exports a necklace checkpoint (P2-P5 YOLOv8n here)
        stock = YOLO({files["v8-yolo-p2"]!r})
        boxes = stock.predict({str(image)!r}, imgsz={IMGSZ}, conf=0.0, verbose=False)[0].boxes
        metrics = stock.val(data={str(data)!r}, imgsz={IMGSZ}, batch=4, plots=False, device="cpu", verbose=False)
        onnx_file = stock.export(format="onnx", imgsz={IMGSZ}, simplify=False)  # no onnxslim to install here
        report["stock_yolo"] = [len(boxes), float(metrics.box.map), onnx_file]
        print(json.dumps(report))
        """
    )
    report = json.loads(out.strip().splitlines()[-1])
    n_boxes, box_map, onnx_file = report.pop("stock_yolo")
    assert n_boxes > 0 and 0.0 <= box_map <= 1.0 and Path(onnx_file).is_file() and onnx_file.endswith(".onnx")
    for key, path in files.items():
        kind, neck, same = report[key]
        assert kind == "NecklaceDetectionModel" and same, (key, report[key])  # YOLO(path) == NecklaceYOLO(path)
        assert neck == f"necklace.{COMBOS[key if key in COMBOS else 'v8-bifpn'][1]}"
        with torch.no_grad():
            here = NecklaceYOLO(path).model.eval()(x)[0]
        assert torch.allclose(torch.load(tmp_path / f"{key}.out.pt"), here, rtol=1e-5, atol=1e-5), key


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(data: Path, tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def interrupt(trainer: Any) -> None:
        if trainer.epoch == 0:
            raise Interrupted  # after epoch 1 was saved to last.pt, before epoch 2

    yolo = build_yolo("yolo11n.yaml", "pafpn", width=32)
    yolo.add_callback("on_fit_epoch_end", interrupt)
    with pytest.raises(Interrupted):
        yolo.train(data=str(data), epochs=2, project=str(tmp_path), name="run", seed=0, val=False, **TRAIN)
    last = tmp_path / "run" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None and isinstance(ckpt["ema"], NecklaceDetectionModel)
    # the stock path cannot rebuild the neck: a clear message that says what to call
    with pytest.raises(KeyError, match=r"NecklaceYOLO\(path\).*train\(resume=True\)"):
        YOLO(last).train(resume=True)
    resumed = NecklaceYOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1 and resumed.trainer.epoch == 1  # epoch 2 of 2, not a new run
    rows = (tmp_path / "run" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and rows[-1].split(",")[0].strip() == "2"
    assert isinstance(resumed.model, NecklaceDetectionModel) and resumed.model.neck_layer.type == "necklace.pafpn"
    assert torch.load(last, weights_only=False)["epoch"] == -1  # finished: optimizer stripped by Ultralytics


@pytest.mark.slow
def test_ddp_worker_rebuilds_the_necklace_model(data: Path, tmp_path: Path) -> None:
    """What Ultralytics' DDP launcher (``ultralytics.utils.dist.generate_ddp_file``) hands each worker: the trainer
    class (pickled by its import path) and the model object; the worker script builds the trainer from them and
    trains. Done here on CPU in a fresh process, with pickle instead of cloudpickle."""
    yolo = build_yolo("yolov8n.yaml", "bifpn", width=32, repeats=1)
    args = {"model": yolo.overrides["model"], "data": str(data), "epochs": 1, "project": str(tmp_path), "name": "ddp"}
    trainer = NecklaceDetectionTrainer(overrides={**args, **TRAIN, "val": False})
    trainer.model = trainer.get_model(cfg=yolo.model.yaml, weights=yolo.model)  # as YOLO.train() does
    state = tmp_path / "ddp_state.pt"
    torch.save({"trainer": type(trainer), "args": vars(trainer.args), "model": trainer.model, "callbacks": {}}, state)
    out = _run_python(
        f"""
        import torch
        from ultralytics.utils import DEFAULT_CFG_DICT
        state = torch.load({str(state)!r}, map_location="cpu", weights_only=False)
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")
        trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"] or None)
        trainer.model = state["model"]
        trainer.train()
        print(type(trainer).__name__, type(trainer.model).__name__, trainer.model.neck_layer.type)
        """
    )
    assert out.strip().splitlines()[-1] == "NecklaceDetectionTrainer NecklaceDetectionModel necklace.bifpn"
    best = torch.load(tmp_path / "ddp" / "weights" / "best.pt", weights_only=False)
    assert isinstance(best["model"], NecklaceDetectionModel) and best["model"].neck_layer.f == [4, 6, 9]


@pytest.mark.slow
def test_export_torchscript_and_openvino(trained: dict[str, Any]) -> None:
    run = trained["v11-bifpn-p2"]
    model = run.model
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = NecklaceYOLO(run.best).model.eval()(x)[0]
    ts = torch.jit.load(model.export(format="torchscript", imgsz=IMGSZ))
    with torch.no_grad():
        got = ts(x)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    ov = pytest.importorskip("openvino")
    folder = Path(model.export(format="openvino", imgsz=IMGSZ))
    compiled = ov.Core().compile_model(str(next(folder.glob("*.xml"))), "CPU")
    got_ov = compiled(x.numpy())[0]
    assert got_ov.shape == tuple(want.shape)
    assert np.abs(got_ov - want.numpy()).max() <= 1e-2 * max(1.0, float(want.abs().max()))


def test_export_onnx_of_a_model_built_in_memory(in_tmp: Path) -> None:
    import onnxruntime as ort

    yolo = build_yolo("yolov8n.yaml", "bifpn", levels=(2, 5), width=32, repeats=1)
    onnx_file = Path(yolo.export(format="onnx", imgsz=IMGSZ)).resolve()
    assert onnx_file.parent == in_tmp.resolve() and onnx_file.name == "yolov8n-necklace-bifpn.onnx"
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        want = yolo.model.eval()(x)[0].numpy()
    (got,) = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max()))


# ----------------------------------------------------------------------------------------------- CLI, offline
def test_cli_builds_and_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["yolo11n.yaml", "bifpn", "--levels", "2", "5", "-o", "width=32", "-o", "repeats=1"]) == 0
    out = capsys.readouterr().out
    assert "model: yolo11n-necklace-bifpn.yaml  neck: necklace.bifpn reads layers [2, 4, 6, 10]" in out
    assert "-> Detect on [(32, 4), (32, 8), (32, 16), (32, 32)]" in out
    assert cli_main(["yolov8n.yaml", "yolo_pafpn", "--levels", "3", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("necklace: error: yolo_pafpn built on") and len(err.strip().splitlines()) == 1


def test_benchmark_script_smoke(tmp_path: Path) -> None:
    """benchmarks/ultralytics_train.py on a tiny setting: it writes its JSON / Markdown and the curves agree."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        module = importlib.import_module("ultralytics_train")
    finally:
        sys.path.remove(str(bench))
    argv = ["--repeats", "2", "--warmup", "1", "--batch", "2", "--imgsz", "64", "--pool", "2", "--threads", "1"]
    assert module.main([*argv, "--malloc", "default", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ultralytics_train.json").read_text())
    curves = result["loss_curves"]
    # 1 warm-up + 2 timed rounds + 1 step under the memory profiler, each model
    assert curves["steps"] == 4 and len(curves["stock"]) == len(curves["necklace"]) == 4
    assert curves["equal_bit_for_bit"] is True and curves["backbone_weight_max_abs_diff_after"] == 0.0
    assert result["time_per_step"]["ratio_necklace_over_stock"]["n"] == 2
    assert result["peak_memory"]["stock"]["peak_bytes"] > 0 and result["peak_memory"]["ratio_necklace_over_stock"] > 0
    assert "necklace / stock" in (tmp_path / "ultralytics_train.md").read_text()


def test_nothing_was_downloaded(network: list[str]) -> None:
    """Every host asked for during this module is one Ultralytics itself probes (and the probe was refused);
    the module fixture also checks that Ultralytics' weights directory got no file (no AMP-check model)."""
    assert set(network) <= ULTRALYTICS_PROBES, network
    with pytest.raises(OSError, match="network blocked"):
        socket.getaddrinfo("pypi.org", 443)
