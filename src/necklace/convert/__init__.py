"""Weight converters from other libraries' necks (torchvision, efficientdet-pytorch, mmdetection, mmyolo).

Each ``from_*`` function maps a peer's state dict onto a necklace neck built with the matching options, so
``neck.load_state_dict(converted)`` loads strictly; the ``*_options`` helpers say which options those are.
"""

from necklace.convert.effdet import effdet_bifpn_key_map, from_effdet_bifpn, to_effdet_bifpn
from necklace.convert.mmdet import (
    from_mmdet_fpn,
    from_mmdet_nasfpn,
    from_mmdet_pafpn,
    mmdet_neck_options,
    neck_from_mmdet,
)
from necklace.convert.mmyolo import from_mmyolo_reppafpn
from necklace.convert.torchvision import fpn_from_torchvision, from_torchvision_fpn, torchvision_fpn_options

__all__ = [
    "effdet_bifpn_key_map",
    "fpn_from_torchvision",
    "from_effdet_bifpn",
    "from_mmdet_fpn",
    "from_mmdet_nasfpn",
    "from_mmdet_pafpn",
    "from_mmyolo_reppafpn",
    "from_torchvision_fpn",
    "mmdet_neck_options",
    "neck_from_mmdet",
    "to_effdet_bifpn",
    "torchvision_fpn_options",
]
