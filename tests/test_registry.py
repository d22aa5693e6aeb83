"""The registry: eager decorator registration, entries that carry default in_specs / image size / typed options, and
options checked against those types before anything is built."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import SPEC_SETS, pyramid

import necklace
from necklace import FeatureSpec, neck_info
from necklace.bench import default_image_size, default_in_specs
from necklace.options import OptionRule, OptionSpec
from necklace.registry import _REGISTRY, RESNET50_C3_C5, register_neck

SRC = Path(necklace.__file__).parent
SPECS = SPEC_SETS["c3c5"]


def _run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    env_path = str(SRC.parent)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_registering_a_custom_neck_first_never_hides_the_builtins() -> None:
    # a fresh process: nothing imported yet, the user's registration comes before any build_neck / list_necks
    proc = _run_fresh(
        """
        from torch import nn
        from necklace.registry import build_neck, list_necks, register_neck
        register_neck("mine", lambda specs, **o: nn.Identity(), summary="mine", paper="-")
        neck = build_neck("fpn", [(16, 8), (32, 16)], width=8)
        print(sorted(list_necks()) == sorted(set(list_necks())), "fpn" in list_necks(), "mine" in list_necks())
        print([s.stride for s in neck.out_specs])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["True True True", "[8, 16, 32]"]


def test_decorator_registers_and_returns_the_builder() -> None:
    @register_neck("test_deco", summary="s", paper="p", default_in_specs=[(8, 8), (16, 16)], image_size=(96, 128))
    def build(in_specs: tuple[FeatureSpec, ...], gain: float = 1.0, mode: str = "a") -> torch.nn.Module:
        return torch.nn.Identity()

    try:
        info = neck_info("test_deco")
        assert info.builder is build
        assert [o.name for o in info.options] == ["gain", "mode"]
        assert info.in_specs_for() == (FeatureSpec(8, 8), FeatureSpec(16, 16))
        assert info.image_size_for() == (96, 128)
        assert isinstance(necklace.build_neck("test_deco", [(8, 8)], gain=np.float32(2.0)), torch.nn.Identity)
        with pytest.raises(TypeError, match=r"test_deco option mode must be a string, got 3 \(int\)"):
            necklace.build_neck("test_deco", [(8, 8)], mode=3)
    finally:
        _REGISTRY.pop("test_deco")


def test_registry_imports_no_neck() -> None:
    # necks import the registry; the registry (and what it imports from necklace) must never import a neck
    for module in ("registry.py", "options.py", "checks.py", "spec.py"):
        tree = ast.parse((SRC / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.startswith(("necklace.necks", "necklace.graph", "necklace.bench"))}, (
            module,
            imported,
        )


def test_every_builtin_is_registered_in_its_own_family_module() -> None:
    assert "register_neck(" not in (SRC / "necks" / "__init__.py").read_text()
    for name in necklace.list_necks():
        builder = neck_info(name).builder
        assert builder.__module__.startswith("necklace.necks."), (name, builder.__module__)
        assert f'"{name}"' in Path(inspect.getfile(builder)).read_text()


@pytest.mark.parametrize("name", necklace.list_necks())
def test_options_mirror_the_graph_function_signature(name: str) -> None:
    info = neck_info(name)
    graph_fn = getattr(sys.modules[info.builder.__module__], f"{info.builder.__name__}_graph")
    params = [p for p in inspect.signature(graph_fn).parameters.values() if p.name != "in_specs"]
    assert [(o.name, o.default) for o in info.options] == [(p.name, p.default) for p in params]
    assert all(isinstance(o, OptionSpec) and o.annotation for o in info.options)
    for o in info.options:
        if o.choices is not None and o.default is not None:
            assert o.default in o.choices, (name, o)


def test_option_choices_and_ranges_are_on_the_entry() -> None:
    fuse = neck_info("bifpn").option("fuse")
    assert (fuse.annotation, fuse.default, fuse.choices) == ("str | None", None, ("fast", "softmax", "sum"))
    assert neck_info("bifpn").option("repeats").ge == 1
    assert neck_info("fpn").option("levels").annotation == "Sequence[int] | None"
    with pytest.raises(ValueError, match=r"neck 'bifpn' has no option 'fusion'\. Did you mean 'fuse'\?"):
        neck_info("bifpn").option("fusion")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"out_channels": 256}, r"fpn got an unexpected keyword argument 'out_channels'\. Valid options: width, lev"),
        ({"num_outs": 5}, r"unexpected keyword argument 'num_outs'\..* Valid options: width, levels, extra"),
        ({"widht": 64}, r"unexpected keyword argument 'widht'\. Did you mean 'width'\? Valid options: width"),
    ],
)
def test_unknown_option_lists_the_valid_ones(option: dict[str, int], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        necklace.build_neck("fpn", SPECS, **option)


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("fpn", {"levels": (3.7, 5.2)}, TypeError, r"fpn option levels\[0\] must be an int, got 3\.7 \(float\)"),
        ("bifpn", {"separable": "no"}, TypeError, r"bifpn option separable must be True or False, got 'no' \(str\)"),
        ("bifpn", {"repeats": -1}, ValueError, r"bifpn option repeats must be >= 1, got -1"),
        ("bifpn", {"fuse": "softmx"}, ValueError, r"unknown bifpn option fuse 'softmx'.*Did you mean 'softmax'"),
        ("fpn", {"width": True}, TypeError, r"fpn option width must be int or a list of int, got True \(bool\)"),
        ("fpn", {"width": [16, 0, 16, 16]}, ValueError, r"fpn option width\[1\] must be >= 1, got 0"),
        ("yolo_pafpn", {"repeats": -2}, ValueError, r"yolo_pafpn option repeats must be >= 1, got -2"),
        ("yolo_pafpn", {"width": float("nan")}, ValueError, r"yolo_pafpn option width must be a finite number"),
        ("nasfpn", {"stack_times": 2.0}, TypeError, r"nasfpn option stack_times must be an int, got 2\.0"),
        ("csp_pan", {"kernel": 4}, ValueError, r"csp_pan option kernel must be odd .*got 4"),
        ("rep_pafpn", {"channels": [16, 32.5, 64]}, TypeError, r"channels\[1\] must be an int, got 32\.5"),
    ],
)
def test_bad_option_values_are_refused_before_building(
    name: str, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        necklace.build_neck(name, SPECS, **options)


def test_numpy_numbers_are_accepted_everywhere() -> None:
    plain = necklace.build_neck("fpn", SPECS, width=16, levels=(3, 5))
    numpy = necklace.build_neck("fpn", SPECS, width=np.int64(16), levels=(np.int32(3), np.int64(5)))
    assert plain.out_specs == numpy.out_specs
    numpy_specs = [(np.int64(s.channels), np.int64(s.stride)) for s in SPECS]
    assert necklace.build_neck("fpn", numpy_specs, width=16).in_specs == SPECS
    yolo = necklace.build_neck("yolo_pafpn", SPECS, width=np.float64(0.0625), repeats=np.int64(1))
    assert [s.channels for s in yolo.out_specs] == [16, 32, 64]


@pytest.mark.parametrize("name", necklace.list_necks())
def test_bench_defaults_come_from_the_registry(name: str) -> None:
    info = neck_info(name)
    assert default_in_specs(name) == info.in_specs_for()
    assert default_image_size(name) == info.image_size_for()


def test_entry_defaults_follow_the_options() -> None:
    assert [s.channels for s in neck_info("bifpn").in_specs_for({"preset": "d5"})] == [64, 176, 512]
    assert neck_info("bifpn").image_size_for({"preset": "d7"}) == (1536, 1536)
    assert neck_info("fpn").in_specs_for({"levels": [2, 6]}) == (FeatureSpec(256, 4), *RESNET50_C3_C5)
    assert [s.channels for s in neck_info("yolo_pafpn").in_specs_for({"preset": "x"})] == [320, 640, 640]
    with pytest.raises(ValueError, match=r"unknown BiFPN preset 'd9'"):
        neck_info("bifpn").in_specs_for({"preset": "d9"})


@pytest.mark.parametrize("name", necklace.list_necks())
def test_small_options_build_a_small_working_neck(name: str) -> None:
    info = neck_info(name)
    neck = necklace.build_neck(name, SPECS, **info.small_options).eval()
    assert sum(p.numel() for p in neck.parameters()) < 200_000
    with torch.no_grad():
        outs = neck(pyramid(SPECS, (64, 64), batch=1))
    assert [tuple(o.shape[1:2]) for o in outs] == [(s.channels,) for s in neck.out_specs]


def test_option_rules_must_name_parameters() -> None:
    def builder(in_specs: object, width: int = 8) -> torch.nn.Module:
        return torch.nn.Identity()

    with pytest.raises(ValueError, match=r"rules for \['widht'\] name no parameter"):
        register_neck("test_bad_rules", builder, summary="s", paper="p", rules={"widht": OptionRule(ge=1)})
    assert "test_bad_rules" not in necklace.list_necks()


def test_compare_options_are_the_comparison_defaults() -> None:
    shared = {"width": 32, "levels": [3, 6]}
    assert {n: dict(neck_info(n).compare_options) for n in ("fpn", "pafpn", "augfpn")} == {
        n: shared for n in ("fpn", "pafpn", "augfpn")
    }
    assert dict(neck_info("bifpn").compare_options) == {**shared, "repeats": 2}
    assert dict(neck_info("yolo_pafpn").compare_options) == {}
    neck = necklace.build_neck("bifpn", neck_info("bifpn").in_specs_for(), **neck_info("bifpn").compare_options)
    assert [s.stride for s in neck.out_specs] == [8, 16, 32, 64]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("yolo_pafpn", {"depth": 2.16e10}, r"yolo_pafpn option depth must be <= 4"),
        ("fpn", {"width": 10**6}, r"fpn option width must be <= 16384, got 1000000"),
        ("bifpn", {"repeats": 10**4}, r"bifpn option repeats must be <= 128"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(name: str, options: dict[str, object], message: str) -> None:
    # (a junk depth once asked torch for 8 TB of weights)
    with pytest.raises(ValueError, match=message):
        necklace.build_neck(name, SPECS, **options)
    with pytest.raises(ValueError, match=r"FeatureSpec.channels must be <= 16384, got 100000"):
        FeatureSpec(100_000, 8)


@pytest.mark.parametrize("name", ["fpn", "pafpn", "augfpn"])
def test_fpn_levels_stopping_below_the_backbone_are_refused(name: str) -> None:
    # levels=(2, 2) on C2-C3 inputs used to fail with a bare KeyError: 3
    specs = [FeatureSpec(8, 4), FeatureSpec(8, 8)]
    with pytest.raises(ValueError, match=r"max_level 2 is below the coarsest backbone level 3 \(stride 8\)"):
        necklace.build_neck(name, specs, width=8, levels=[2, 2])
    assert [s.stride for s in necklace.build_neck(name, specs, width=8, levels=[2, 3]).out_specs] == [4, 8]
