"""The ``bitlens`` command: a thin layer over the Python API.

Every option comes from a config dataclass, whose field docstrings are the ``--help`` text (see ``options.py`` for
the one convention all commands follow). Errors in the input print one line and exit with code 2; Ctrl-C writes a
checkpoint where there is one to write and exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..io import BitlensError
from . import commands
from .options import Flag

DESCRIPTION = "bitlens: Binary Autoencoders for interpreting language-model hidden states."


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``bitlens train: error: ... (see --help)``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wider option column, so option names and their help stay on one line where they fit."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)


def new_parser(**kwargs) -> argparse.ArgumentParser:
    return Parser(allow_abbrev=False, formatter_class=HelpFormatter, **kwargs)


def new_subparsers(parser: argparse.ArgumentParser, dest: str, metavar: str):
    return parser.add_subparsers(dest=dest, metavar=metavar, required=True,
                                 parser_class=lambda **kw: new_parser(**kw))


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``preset`` the training options of train and synth default to that preset's values."""
    from ..training.config import PRESETS

    defaults = dict(PRESETS.get(preset or "", {}))
    if preset:
        defaults["preset"] = preset
    parser = new_parser(prog="bitlens", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--quiet", action=Flag, default=False, help="print only warnings and errors (default: false)")
    sub = new_subparsers(parser, "command", "COMMAND")
    for spec in commands.COMMANDS:
        spec.register(sub.add_parser(spec.name, help=spec.help, description=spec.help), defaults)
    return parser


def _version() -> str:
    from .._version import __version__

    return f"bitlens {__version__}"


def _preset(argv: list[str]) -> str | None:
    """The value of --preset, read before the real parse so the preset's values become the option defaults."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.preset


class _Levels(logging.Filter):
    def __init__(self, below: int) -> None:
        super().__init__()
        self.below = below

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.below


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout``/``sys.stderr`` is at the time of each record (not the stream of the moment
    the handler was made), so a caller that swaps the streams (a notebook, a test's capture) still sees the lines."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the live stream is always used
        pass


def setup_logging(quiet: bool = False) -> None:
    """Progress messages of the library go to stdout as plain lines, warnings to stderr as 'bitlens: warning: ...'."""
    log = logging.getLogger("bitlens")
    for handler in list(log.handlers):
        log.removeHandler(handler)
    info = _ConsoleHandler("stdout")
    info.addFilter(_Levels(logging.WARNING))
    info.setFormatter(logging.Formatter("%(message)s"))
    warn = _ConsoleHandler("stderr")
    warn.setLevel(logging.WARNING)
    warn.setFormatter(logging.Formatter("bitlens: %(levelname)s: %(message)s"))
    log.addHandler(info)
    log.addHandler(warn)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    preset = _preset(argv)
    from ..training.config import PRESETS

    if preset is not None and preset not in PRESETS:
        print(f"bitlens: error: unknown preset {preset!r}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    parser = build_parser(preset)
    if not argv:
        parser.print_help()
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
        return int(e.code or 0)
    setup_logging(args.quiet or commands.launch_rank() > 0)  # under torchrun rank 0 speaks for all
    spec = commands.BY_NAME[args.command]
    try:
        code = spec.run(args, argv) or 0
        from ..training.distributed import leave_world

        leave_world()
        return code
    except BitlensError as e:
        from ..redact import redact

        print(f"bitlens: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bitlens: interrupted; {spec.resumable_hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
