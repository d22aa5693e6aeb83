"""Building blocks: convolutions, resampling, fusion and refine blocks, all plain PyTorch.

Every layer here computes what torch's own modules compute, in any mode (training, ``eval()``, ``no_grad``,
tracing, export); nothing is compiled, loaded or written. Faster inference forms are an explicit transformation:
:func:`necklace.deploy` with a named runtime.
"""

from necklace.layers.aspp import ASPP
from necklace.layers.blocks import BLOCKS, Bottleneck, C2f, CSPBlock, build_block
from necklace.layers.conv import (
    ConvCfg,
    ConvNormAct,
    DepthwiseSeparableConv,
    SeparableConv,
    make_act,
    make_norm,
)
from necklace.layers.fold import fold_bn, fold_bn_into_conv
from necklace.layers.fuse import Fuse
from necklace.layers.rep import BepC3, BottleRep, GhostConv, RepBlock, RepConv
from necklace.layers.resample import Resample, match_size
from necklace.layers.rfa import ResidualFeatureAugmentation
from necklace.layers.sac import ConvAWS2d, SAConv2d, convert_to_aws, convert_to_sac

__all__ = [
    "ASPP",
    "BLOCKS",
    "BepC3",
    "BottleRep",
    "Bottleneck",
    "C2f",
    "CSPBlock",
    "ConvAWS2d",
    "ConvCfg",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "Fuse",
    "GhostConv",
    "RepBlock",
    "RepConv",
    "Resample",
    "ResidualFeatureAugmentation",
    "SAConv2d",
    "SeparableConv",
    "build_block",
    "convert_to_aws",
    "convert_to_sac",
    "fold_bn",
    "fold_bn_into_conv",
    "make_act",
    "make_norm",
    "match_size",
]
