"""Thin adapters that put necklace necks into other libraries' detectors through their own extension points.

Nothing here is imported with ``necklace``; each adapter is imported on its own and needs its host library:

- :mod:`necklace.integrations.ultralytics`: any necklace neck inside an Ultralytics YOLOv8 / YOLO11 detector,
  trained, validated, saved and exported by Ultralytics itself (``pip install 'necklace[ultralytics]'``);
- :mod:`necklace.integrations.mmdet`: necklace necks from MMDetection / MMYOLO config files
  (``type="necklace.Neck"``), and mmdet checkpoints converted to them.

An adapter never writes into the host library's files or module globals; it checks the host's version and says
which versions it supports.
"""

__all__: list[str] = []
