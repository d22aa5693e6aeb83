"""Shared pytest set-up: doctest namespace and deterministic, single-thread torch."""

import importlib.util

import pytest
import torch

import necklace
from necklace import FeatureSpec

#: optional integrations whose modules (and doctests) need their host library
collect_ignore_glob = [] if importlib.util.find_spec("ultralytics") else ["src/necklace/integrations/ultralytics/*"]

torch.set_num_threads(1)  # tiny test tensors: one thread avoids OpenMP spin-waits on a busy 2-core box


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["necklace"] = necklace
    doctest_namespace["FeatureSpec"] = FeatureSpec
    torch.manual_seed(0)
