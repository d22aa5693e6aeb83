"""The ``necklace`` parser and :func:`main`: every command registers itself from its own module."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from necklace.cli.args import _PROG, _one_line, _UsageError
from necklace.cli.bench import add_bench_parser
from necklace.cli.compare import add_compare_parser
from necklace.cli.features import add_features_parser
from necklace.cli.necks import add_export_parser, add_list_parser, add_show_parser
from necklace.cli.search import add_search_parser
from necklace.cli.train import add_eval_parser, add_train_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``necklace`` command (sub-commands ``list``, ``show``, ``bench``, ``train``,
    ``eval``, ``compare``, ``features``)."""
    from necklace import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG, description="Object-detection necks on one graph engine: list, inspect and benchmark them."
    )
    parser.add_argument("--version", action="version", version=f"necklace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for add in (
        add_list_parser,
        add_show_parser,
        add_bench_parser,
        add_export_parser,
        add_train_parser,
        add_eval_parser,
        add_compare_parser,
        add_search_parser,
        add_features_parser,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``necklace`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0: success; 2: a usage or user error (one line on stderr, no traceback); 1: an unexpected internal error
    (one line; ``--debug`` shows the traceback); 130: interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version / argparse usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = sys.stdout, sys.stderr
    try:
        return int(args.func(args, out, err))
    except BrokenPipeError:  # `necklace show fpn | head`: stop quietly
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130
    except (_UsageError, ValueError, TypeError, KeyError, OSError, ImportError) as e:
        if args.debug:
            raise
        err.write(f"{_PROG}: error: {_one_line(e)}\n")
        return 2
    except Exception as e:  # a bug rather than a user error: still no traceback unless asked for
        if args.debug:
            raise
        err.write(
            f"{_PROG}: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)\n"
        )
        return 1
