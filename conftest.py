"""Shared pytest set-up: doctest namespace and deterministic, single-thread torch."""

import pytest
import torch

import necklace
from necklace import FeatureSpec

torch.set_num_threads(1)  # tiny test tensors: one thread avoids OpenMP spin-waits on a busy 2-core box


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["necklace"] = necklace
    doctest_namespace["FeatureSpec"] = FeatureSpec
    torch.manual_seed(0)
