"""Import mmdet's necks without mmcv's compiled ops (``mmcv-lite`` has none; no neck calls one).

The shim lives in the library (:mod:`necklace.bench.peers`, also used by ``necklace bench --vs mmdet`` and the
benchmarks); the tests import it from here under their historical names.
"""

from __future__ import annotations

from necklace.bench.peers import import_mmdet_necks
from necklace.bench.peers import install_mmcv_ext_shim as install_ext_shim

__all__ = ["import_mmdet_necks", "install_ext_shim"]
