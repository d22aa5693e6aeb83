"""RoI side of the pyramid: level assignment, multi-level RoI pooling, PANet adaptive feature pooling, AugFPN soft
RoI selection.

Every pooler here takes the feature maps highest resolution first (a ``list[Tensor]`` or torchvision's
``OrderedDict[str, Tensor]``) and the boxes as a list with one ``Tensor[N_i, 4]`` of ``(x1, y1, x2, y2)`` image-pixel
boxes per image. They subclass :class:`torchvision.ops.MultiScaleRoIAlign`, so torchvision's ``FasterRCNN`` /
``MaskRCNN`` accept them as ``box_roi_pool`` / ``mask_roi_pool`` (their constructors check that type) and call them
as ``pool(features, proposals, image_shapes)``.

Every input is checked before ``roi_align`` runs: boxes must be finite (a NaN/Inf coordinate raises ``ValueError``
naming the image and box index: torchvision's ``roi_align`` would crash the process on it; :func:`assign_levels` on its
own, a pure level rule, maps NaN boxes to ``min_level``), real-valued (integer pixel boxes are fine), on the features'
device, one ``Tensor[N, 4]`` per image (``torch.zeros(0, 4)`` for none); ``Tensor[K, 5]`` rows need batch indices of
the batch; with adaptive sampling (``sampling_ratio <= 0``) a box far larger than any image is refused
(:data:`~necklace.roi.base.MAX_SAMPLES_PER_BIN`) instead of running for minutes.

Which module for which paper:

- :class:`MultiLevelRoIPool` (FPN): each RoI from the one level FPN eq. (1) picks (:func:`assign_levels`);
  output ``[K, C, out, out]``.
- :class:`AdaptiveFeaturePooling` (PANet): each RoI from every level, a per-level layer, element-wise max;
  output ``[K, hidden]`` (fc layer) or ``[K, C', out, out]`` (conv layer).
- :class:`SoftRoISelection` (AugFPN): each RoI from every level, learned per-level spatial gates, weighted sum;
  output ``[K, C, out, out]``.
"""

from necklace.roi.levels import RULES, assign_levels
from necklace.roi.poolers import AdaptiveFeaturePooling, MultiLevelRoIPool, SoftRoISelection

__all__ = ["RULES", "AdaptiveFeaturePooling", "MultiLevelRoIPool", "SoftRoISelection", "assign_levels"]
