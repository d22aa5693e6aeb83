"""Shared pytest set-up: doctest namespace, deterministic single-thread torch, and the area markers."""

import importlib.util
from pathlib import Path

import pytest
import torch

import necklace
from necklace import FeatureSpec

# adapters whose host library is absent are not imported for their doctests (their tests importorskip it)
collect_ignore = [] if importlib.util.find_spec("mmdet") else ["src/necklace/integrations/mmdet.py"]
#: optional integrations whose modules (and doctests) need their host library
collect_ignore_glob = (
    []
    if importlib.util.find_spec("ultralytics")
    else ["src/necklace/integrations/ultralytics/*", "src/necklace/detection/search/yolo.py"]
)

torch.set_num_threads(1)  # tiny test tensors: one thread avoids OpenMP spin-waits on a busy 2-core box


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["necklace"] = necklace
    doctest_namespace["FeatureSpec"] = FeatureSpec
    torch.manual_seed(0)


#: test file (or folder) prefix, relative to the repository root -> the area marker its tests carry
#: (``pytest -m native``, ``pytest -m "not train"``); markers are registered in pyproject.toml
AREA_MARKERS = {
    "tests/native/": "native",
    "tests/test_runtimes.py": "runtime",
    "tests/test_export.py": "export",
    "tests/test_compile.py": "runtime",
    "tests/test_parity_": "parity",
    "tests/test_peers.py": "parity",
    "tests/test_contract.py": "contract",
    "tests/test_plain.py": "contract",
    "tests/test_train.py": "train",
    "tests/test_compare.py": "train",
    "tests/test_integration_": "integration",
    "tests/test_fuzz": "fuzz",
}
_ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.fspath)).resolve().relative_to(_ROOT).as_posix()
        except ValueError:
            continue
        for prefix, marker in AREA_MARKERS.items():
            if rel.startswith(prefix):
                item.add_marker(getattr(pytest.mark, marker))
