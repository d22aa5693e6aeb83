"""Building blocks: convolutions, resampling, fusion and refine blocks."""

from necklace.layers.blocks import BLOCKS, Bottleneck, C2f, CSPBlock, build_block
from necklace.layers.conv import ConvCfg, ConvNormAct, SeparableConv, make_act, make_norm
from necklace.layers.fuse import Fuse
from necklace.layers.rep import GhostConv, RepBlock, RepConv, fold_bn
from necklace.layers.resample import Resample, match_size

__all__ = [
    "BLOCKS",
    "Bottleneck",
    "C2f",
    "CSPBlock",
    "ConvCfg",
    "ConvNormAct",
    "Fuse",
    "GhostConv",
    "RepBlock",
    "RepConv",
    "Resample",
    "SeparableConv",
    "build_block",
    "fold_bn",
    "make_act",
    "make_norm",
    "match_size",
]
