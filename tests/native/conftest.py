"""The native runtime's tests: the C library is built (or found in the cache) once for the session."""

from __future__ import annotations

import pytest

from necklace.deploy.native.loader import build


@pytest.fixture(autouse=True, scope="session")
def _native_library() -> None:
    build()
