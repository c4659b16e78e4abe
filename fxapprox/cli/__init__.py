"""Command line `fxapprox SUBCOMMAND ...` → the library calls; one module per subcommand.

Each subcommand module defines `add_parser(subparsers)` (which registers the parser and sets
`func`) and is listed in `_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fxapprox.errors import FxApproxError

__all__ = ["main", "build_parser"]

_SUBCOMMANDS = ["analyze", "compress", "eval", "export", "bench", "demo", "select-eval", "frontier"]


def build_parser() -> argparse.ArgumentParser:
    """All subcommands → one argparse parser."""
    parser = argparse.ArgumentParser(
        prog="fxapprox",
        description="Training-free compression of transformers: find spans of blocks that are "
        "(nearly) linear maps, replace them by one Linear or the identity, export to ONNX.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _SUBCOMMANDS:
        importlib.import_module(f"fxapprox.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the subcommand; typed fxapprox errors and refusals to overwrite → message, exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FxApproxError, FileExistsError) as err:
        print(f"fxapprox {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
