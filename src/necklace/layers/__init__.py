"""Building blocks: convolutions, resampling, fusion and refine blocks."""

from necklace.layers.aspp import ASPP
from necklace.layers.blocks import BLOCKS, Bottleneck, C2f, CSPBlock, build_block
from necklace.layers.conv import (
    ConvCfg,
    ConvNormAct,
    DepthwiseSeparableConv,
    PointwiseConv2d,
    PointwiseToChannelsLast,
    SeparableConv,
    make_act,
    make_norm,
)
from necklace.layers.fuse import Fuse
from necklace.layers.fused import conv_act_fused, set_fused_conv_act
from necklace.layers.nearest import upsample_nearest
from necklace.layers.rep import BepC3, BottleRep, GhostConv, RepBlock, RepConv, fold_bn
from necklace.layers.resample import Resample, match_size
from necklace.layers.rfa import ResidualFeatureAugmentation
from necklace.layers.sac import ConvAWS2d, SAConv2d, convert_to_aws, convert_to_sac
from necklace.layers.winograd import WinogradConv2d, set_winograd

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
    "PointwiseConv2d",
    "PointwiseToChannelsLast",
    "RepBlock",
    "RepConv",
    "Resample",
    "ResidualFeatureAugmentation",
    "SAConv2d",
    "SeparableConv",
    "WinogradConv2d",
    "build_block",
    "conv_act_fused",
    "convert_to_aws",
    "convert_to_sac",
    "fold_bn",
    "make_act",
    "make_norm",
    "match_size",
    "set_fused_conv_act",
    "set_winograd",
    "upsample_nearest",
]
