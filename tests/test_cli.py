"""The ``necklace`` command line: list / show / bench output, files it writes, and one-line errors."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import necklace
from necklace import FeatureSpec, NeckGraph, list_necks
from necklace.cli import main, parse_options, parse_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--in-channels", "16,32,64", "--width", "32"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ list
def test_list_table_names_every_neck(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in list_necks():
        info = necklace.neck_info(name)
        assert f"\n{name} " in out
        assert info.paper in out
        assert info.knobs[0] in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == list_necks()
    assert all(d["summary"] and d["paper"] and isinstance(d["knobs"], list) for d in data)
    fpn = next(d for d in data if d["name"] == "fpn")  # the typed options read off the graph function
    assert any(o.startswith("width: ") for o in fpn["options"]) and any(
        o.startswith("upsample: ") for o in fpn["options"]
    )


def test_console_script_subprocess() -> None:
    script = Path(sys.executable).with_name("necklace")
    exe = str(script) if script.exists() else shutil.which("necklace")
    cmd = [exe, "list"] if exe else [sys.executable, "-m", "necklace", "list"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in list_necks())


def test_python_dash_m(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["necklace", "list", "--format", "json"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("necklace", run_name="__main__")
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------ show
def test_show_prints_nodes_and_params(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "fpn", *SMALL, "--levels", "3-6")
    assert code == 0
    for node in ("C3", "L5", "L4", "P3", "P6"):
        assert f" {node} " in out
    assert "in_specs: 16ch /8, 32ch /16, 64ch /32" in out
    params = sum(p.numel() for p in necklace.build_neck("fpn", [(16, 8), (32, 16), (64, 32)], width=32).parameters())
    assert f"params: {params:,}" in out


def test_show_png_is_a_readable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image as mpimg

    png = tmp_path / "bifpn.png"
    code, _, err = run(capsys, "show", "bifpn", *SMALL, "--png", str(png))
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    img = mpimg.imread(png)
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert w > 1500 and 500 < h < w  # 8 columns x 5 levels: wide, readable
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_show_yaml_round_trips_and_graph_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml_path, json_path = tmp_path / "neck.yaml", tmp_path / "neck.json"
    args = ("show", "pafpn", *SMALL, "--option", "variant=panet", "-o", "levels=3,7")
    code, out, _ = run(capsys, *args, "--yaml", str(yaml_path), "--json", str(json_path))
    assert code == 0
    expected = necklace.build_neck("pafpn", [(16, 8), (32, 16), (64, 32)], width=32, variant="panet", levels=(3, 7))
    assert NeckGraph.load(yaml_path) == expected.graph
    assert NeckGraph.load(json_path) == expected.graph
    code, out2, _ = run(capsys, "show", "--graph", str(yaml_path))
    assert code == 0
    assert expected.graph.describe() in out2 and expected.graph.describe() in out


def test_option_parser() -> None:
    assert parse_value("12") == 12 and parse_value("-1.5") == -1.5 and parse_value("1e-3") == 1e-3
    assert parse_value("TRUE") is True and parse_value("false") is False and parse_value("None") is None
    assert parse_value("3,7") == [3, 7] and parse_value("a,b") == ["a", "b"] and parse_value("'12'") == "12"
    assert parse_options(["extra-source=input", "relu_before_extra=true"]) == {
        "extra_source": "input",
        "relu_before_extra": True,
    }


# ------------------------------------------------------------------------------------------------ bench
def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("bench", "fpn", "yolo_pafpn", "--image-size", "64", "96", "--repeats", "2", "--warmup", "0")
    code, out, err = run(capsys, *argv, "--option", "width=0.25", "--format", "json")
    assert code == 2  # width=0.25 is not an int width for fpn: a user error
    assert "Traceback" not in err and err.count("\n") >= 1
    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [d["name"] for d in data] == ["fpn", "yolo_pafpn"]
    for d in data:
        assert d["params"] > 0 and d["flops"] > 0 and d["gflops"] > 0
        assert d["latency"]["median_ms"] > 0 and d["latency"]["repeats"] == 2
        assert d["image_size"] == [64, 96]
    assert data[0]["in_specs"][0] == {"channels": 512, "stride": 8}  # ResNet-50 C3 default
    assert "[2/2] yolo_pafpn" in err


def test_bench_csv_to_file_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.csv"
    argv = ("bench", "bifpn", "--in-channels", "16,32,64", "--image-size", "64", "64", "--repeats", "2")
    code, out, err = run(capsys, *argv, "--warmup", "0", "-o", "repeats=1", "--output", str(path), "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and rows[0]["name"] == "bifpn"
    assert int(rows[0]["params"]) > 0 and int(rows[0]["flops"]) > 0 and float(rows[0]["median_ms"]) > 0
    assert rows[0]["in_specs"] == "16@8 32@16 64@32" and rows[0]["repeats"] == "2"
    header = out.splitlines()[0].split()
    assert header[:3] == ["neck", "image", "params"] and "GFLOPs" in header
    assert "bifpn" in out and "5 x 64ch" in out
    assert "runs" not in err  # --quiet


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "fpm"], "unknown neck 'fpm'. Did you mean 'fpn'?"),
        (["bench", "bifpm", "--repeats", "1"], "unknown neck 'bifpm'"),
        (["show", "fpn", "--option", "foo=1"], "unexpected keyword argument 'foo'. Valid options: width, levels"),
        (["show", "fpn", "--option", "width"], "bad option 'width': write it as key=value"),
        (["show", "fpn", "--in-strides", "8,12,32"], "stride 12 is not a power of two"),
        (["show", "fpn", "--in-channels", "1,2", "--in-strides", "8,16,32"], "--in-channels has 2 values"),
        (["show", "fpn", "--in-channels", "a,b"], "expected comma-separated integers"),
        (["show", "fpn", "--levels", "3-9"], "max_level 9 is above"),
        (["show", "bifpn", "-o", "preset=d9"], "unknown BiFPN preset 'd9'"),
        (["show", "--graph", "/no/such/graph.yaml"], "graph file '/no/such/graph.yaml' not found"),
        (["show"], "give a neck NAME"),
        (["show", "fpn", "--png", "/no/such/dir/x.png"], "does not exist"),
        (["show", "fpn", "--png", "picture.gif"], "--png 'picture.gif': the file name must end in .png"),
        (["bench", "fpn", "--repeats", "0"], "repeats must be an int >= 1"),
    ],
)
def test_errors_are_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.startswith("necklace: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_bad_graph_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n")
    code, _, err = run(capsys, "show", "--graph", str(bad))
    assert code == 2 and "bad.yaml" in err and err.count("\n") == 1
    bad.write_text("in_specs: [{channels: 8, stride: 8}]\noutputs: [C3]\n")
    code, _, err = run(capsys, "show", "--graph", str(bad))
    assert code == 2 and "lacks the key 'nodes'" in err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--version"]) == 0
    assert necklace.__version__ in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0
    assert "--image-size" in capsys.readouterr().out


def test_graph_file_with_feature_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = necklace.necks.fpn_graph([FeatureSpec(8, 8), FeatureSpec(16, 16)], width=8)
    g.save(tmp_path / "g.yml")
    code, out, _ = run(capsys, "show", "--graph", str(tmp_path / "g.yml"), "--png", str(tmp_path / "g.svg"))
    assert code == 0 and "outputs: P3 (8ch /8)" in out
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
