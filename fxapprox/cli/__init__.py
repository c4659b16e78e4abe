"""Command line `fxapprox SUBCOMMAND ...` → the library calls; one module per subcommand.

Each subcommand module defines `add_parser(subparsers)` (which registers the parser and sets
`func`) and is listed in `_SUBCOMMANDS`; under `torchrun` only those in `_MULTI_PROCESS` run. A
bad input ends in one line on stderr and exit code 2, never a traceback; `--debug` (or
`FXAPPROX_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from fxapprox import distributed
from fxapprox.errors import FxApproxError, SingleProcessCommandError

__all__ = ["main", "build_parser", "USER_ERRORS", "DEBUG_ENV"]

_SUBCOMMANDS = ["analyze", "compress", "eval", "export", "bench", "demo", "select-eval", "frontier"]
# the subcommands that split their work over the ranks of a process group (torchrun); the others refuse one
_MULTI_PROCESS = ("analyze", "compress", "frontier")
DEBUG_ENV = "FXAPPROX_DEBUG"
# errors a user's input causes (typed fxapprox errors, refusals to overwrite, missing or unreadable
# files); anything else is a bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (FxApproxError, FileExistsError, FileNotFoundError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError)
# options whose value may start with '-' (span -1 is the embeddings): `--spans -1-0` → `--spans=-1-0`
_DASH_VALUE_OPTIONS = ("--spans", "--ablation-spans")
_DASH_VALUE = re.compile(r"-\d")


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default unless its text already names one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not text or "default" in text.lower() or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return action.help
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (also for the subcommands) with `_HelpFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands → one argparse parser."""
    parser = _Parser(
        prog="fxapprox",
        description="Training-free compression of transformers: find spans of blocks that are "
        "(nearly) linear maps, replace them by one Linear or the identity, export to ONNX.",
        epilog=f"More than one process or machine: `torchrun --nproc-per-node N -m fxapprox "
        f"{'|'.join(_MULTI_PROCESS)} ...` splits the calibration batches and the scoring over the ranks "
        "(gloo on CPUs, NCCL on GPUs); rank 0 alone prints and writes. The other subcommands run in one process.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the Python traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in _SUBCOMMANDS:
        importlib.import_module(f"fxapprox.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def _join_dash_values(argv: list[str]) -> list[str]:
    """`--spans -1-0` → `--spans=-1-0`: argparse would read `-1-0` as an option."""
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if tok in _DASH_VALUE_OPTIONS:
            nxt = next(it, None)
            if nxt is not None and _DASH_VALUE.match(nxt):
                out.append(f"{tok}={nxt}")
                continue
            out.append(tok)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(tok)
    return out


def _run(args: argparse.Namespace) -> int:
    """The subcommand, refused in a process group of several ranks unless it splits its work there."""
    if distributed.is_distributed() and args.command not in _MULTI_PROCESS:
        raise SingleProcessCommandError(
            f"`fxapprox {args.command}` runs in one process, but it was started as {distributed.world_size()} "
            f"(torchrun?): run it without torchrun (only {', '.join(_MULTI_PROCESS)} split their work over ranks)")
    from fxapprox.cli.common import check_output_files

    check_output_files(args)  # every --json/--heatmap/--markdown/--onnx path, before any work
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the subcommand; a bad input → one line on stderr, exit 2."""
    args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    joined = distributed.init_from_env()  # under torchrun: join the process group; rank 0 alone logs and prints
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level if distributed.is_main() else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            return _run(args)
        try:
            return _run(args)
        except USER_ERRORS as err:
            message = " ".join(str(err).split()) or type(err).__name__
            if distributed.is_main():
                print(f"fxapprox {args.command}: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"fxapprox {args.command}: interrupted", file=sys.stderr)
            return 130
    finally:
        if joined:
            distributed.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
