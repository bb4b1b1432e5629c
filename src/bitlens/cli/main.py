"""The ``bitlens`` command: a thin layer over the Python API.

Every option comes from a config dataclass, whose field docstrings are the ``--help`` text.
Errors in the input print one line and exit with code 2; Ctrl-C writes a checkpoint and exits with 130.
"""

from __future__ import annotations

import sys
from pathlib import Path

import simple_parsing as sp

from ..io import BitlensError
from . import commands

DESCRIPTION = "bitlens: Binary Autoencoders for interpreting language-model hidden states."


def _subparser(sub, name: str, help_text: str) -> sp.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          add_option_string_dash_variants=sp.DashVariant.UNDERSCORE_AND_DASH,
                          formatter_class=sp.SimpleHelpFormatter)


def build_parser() -> sp.ArgumentParser:
    parser = sp.ArgumentParser(prog="bitlens", description=DESCRIPTION,
                               add_option_string_dash_variants=sp.DashVariant.UNDERSCORE_AND_DASH)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=sp.ArgumentParser)
    for spec in commands.COMMANDS:
        spec.register(_subparser(sub, spec.name, spec.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ValueError as e:  # a dataclass __post_init__ refused a value
        print(f"bitlens: error: {e}", file=sys.stderr)
        return 2
    if args.version:
        from .. import __version__
        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    spec = commands.BY_NAME[args.command]
    try:
        return spec.run(args, argv) or 0
    except BitlensError as e:
        from ..redact import redact

        print(f"bitlens: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; continue with the same command plus --resume (checkpoint in {Path(out) / 'checkpoint'})" if out else ""
        print(f"bitlens: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
