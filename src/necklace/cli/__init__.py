"""The ``necklace`` command line: a thin argparse layer over the library.

    necklace list [--format table|json]
    necklace show NAME [spec/option flags] [--png FILE] [--yaml FILE] [--json FILE]
    necklace show --graph FILE.yaml [--png FILE]
    necklace bench [NAME ...] [spec/option flags] [--image-size H W] [--batch B] [--repeats N] [--warmup N]
                   [--threads T] [--device D] [--mode M] [--format table|json|csv] [--output FILE]
    necklace bench [NAME ...] --vs PEER [--width C] [-o preset=P] [--image-size H W] [--repeats N] [--warmup N]
                   [--threads T] [--mode eager|deployed] [--format table|json|csv] [--output FILE]
    necklace train [--config FILE.yaml] [--detector D] [--neck NAME] [-o KEY=VALUE] [--data SPEC] [--steps N]
                   [--output DIR] [--resume [CHECKPOINT]] [--eval] ...   (see necklace.cli.train)
    necklace eval --checkpoint FILE [--data SPEC] [--backend faster_coco_eval|pycocotools] [--format table|json]
    necklace compare [--necks fpn,pafpn,bifpn] [-o NECK.KEY=VALUE] [--seeds 0,1] [--steps N] [--output DIR] [--quick]
    necklace features [IMAGE | --synthetic N] --checkpoint RUN_DIR [--out heatmaps.png]
    necklace export NAME [spec/option flags] | --graph FILE.yaml  --image-size H W [--format onnx|torchscript]
                    [--dynamic] [--no-deploy] [--no-verify] [--batch B] [--opset N] [--weights FILE] --output FILE

Errors (unknown neck, bad option, bad spec, missing file) print one line on stderr and exit with status 2.

The package: :mod:`~necklace.cli.args` (the shared argument helpers, a leaf module), one module per command
family (:mod:`~necklace.cli.necks`: list/show/export, :mod:`~necklace.cli.bench`, :mod:`~necklace.cli.train`:
train/eval, :mod:`~necklace.cli.compare`, :mod:`~necklace.cli.features`) and :mod:`~necklace.cli.app` (the
parser and :func:`main`). The library never imports this package.

Example:
    >>> main(["list", "--format", "json"]) == 0  # doctest: +ELLIPSIS
    [...
    True
"""

from necklace.cli.app import build_parser, main
from necklace.cli.args import parse_options, parse_value

__all__ = ["build_parser", "main", "parse_options", "parse_value"]
