"""The ``asyncflow`` command line: ``asyncflow demo`` (more subcommands to come).

Each subcommand is one ``_add_<name>`` function that declares its arguments
and sets ``handler``: a function taking the parsed arguments and returning an
exit code. Subcommands import what they need when they run, so
``asyncflow --help`` stays fast and an optional extra (a database driver for
``runs`` or ``worker``) is only needed by the command that uses it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from typing import TextIO

from . import __version__

Handler = Callable[[argparse.Namespace], int]

_MAX_WIDTH = 100


def use_color(stream: TextIO, *, no_color_flag: bool = False) -> bool:
    """Whether to write ANSI colours to ``stream``.

    Only to a terminal, never with ``--no-color``, and never when the
    ``NO_COLOR`` environment variable is set to a non-empty value
    (https://no-color.org).
    """
    if no_color_flag or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def can_draw_unicode(stream: TextIO) -> bool:
    """Whether ``stream``'s encoding can carry the tree's box-drawing glyphs."""
    try:
        "├─│└✓✗○⊘…".encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def output_width(stream: TextIO) -> int:
    """The columns to draw into: the terminal's width (80 for pipes), at most 100."""
    if hasattr(stream, "isatty") and stream.isatty():
        return min(shutil.get_terminal_size().columns, _MAX_WIDTH)
    return 80


# ---- subcommands ----------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    import anyio

    from ._core.records import RunStatus
    from ._demo import SUMMARY, run_demo
    from ._render import format_run

    out = sys.stdout
    color = use_color(out, no_color_flag=args.no_color)
    result = anyio.run(run_demo)
    print(format_run(result, color=color, width=output_width(out), unicode=can_draw_unicode(out)), file=out)
    print(file=out)
    summary = result.store.get(SUMMARY, "no summary was written")
    print(f"\x1b[1m{summary}\x1b[0m" if color else summary, file=out)
    if args.mermaid:
        print("\n```mermaid", file=out)
        print(result.to_mermaid(), end="", file=out)
        print("```", file=out)
    return 0 if result.status is RunStatus.COMPLETED else 1


def _add_demo(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser
) -> None:
    parser = commands.add_parser(
        "demo",
        parents=[output],
        help="run a small discovery workflow that grows its own plan, and draw the run",
        description=(
            "Run a demo workflow: a discover stage inserts one stage per resource kind, "
            "each of which fans out one action per item, run concurrently; a step is "
            "switched off at run time. Prints the run as a tree."
        ),
    )
    parser.add_argument(
        "--mermaid",
        action="store_true",
        help="also print the executed plan as a Mermaid flowchart (paste it into mermaid.live)",
    )
    parser.set_defaults(handler=_demo)


# ---- the parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncflow`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="asyncflow",
        description="asyncio-native workflows of stages of async actions that reshape their own run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Options every subcommand that prints takes, declared once.
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--no-color",
        action="store_true",
        help="do not colour the output (also off when NO_COLOR is set or output is not a terminal)",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    _add_demo(commands, output)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``asyncflow`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help, --version and bad usage; hand back its code.
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
