"""Shared pytest set-up: doctest namespace and deterministic, single-thread torch."""

import importlib.util

import pytest
import torch

import necklace
from necklace import FeatureSpec

# adapters whose host library is absent are not imported for their doctests (their tests importorskip it)
collect_ignore = [] if importlib.util.find_spec("mmdet") else ["src/necklace/integrations/mmdet.py"]

torch.set_num_threads(1)  # tiny test tensors: one thread avoids OpenMP spin-waits on a busy 2-core box


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["necklace"] = necklace
    doctest_namespace["FeatureSpec"] = FeatureSpec
    torch.manual_seed(0)
