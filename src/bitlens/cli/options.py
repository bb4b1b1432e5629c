"""Command-line options from config dataclasses, under one convention for every command.

* Every option is kebab-case (``--val-fraction``); there is no second spelling, so ``--help`` reads the same on
  every run.
* Booleans are ``--x/--no-x`` switches.
* Lists take space- or comma-separated values: ``--layers 3 5 7`` and ``--layers 3,5,7`` are the same.
* Enumerations (``Literal`` fields) list their choices; a field without a default is a required option.
* The help of an option is the docstring under its dataclass field, followed by its default.
* Abbreviated options are refused (``--entropy-w`` is an error, not ``--entropy-weight``).

A preset replaces field defaults *before* parsing (``defaults=``), so an option typed on the command line always
wins over the preset and ``--help`` shows the defaults in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, Literal

from simple_parsing.docstring import get_attribute_docstring

NO_CLI = "cmd"  # field metadata key: {"cmd": False} keeps a field off the command line (set from the data)


class Flag(argparse.Action):
    """A boolean switch with its negation: ``--x`` sets True, ``--no-x`` sets False."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None):
        positive = option_strings[0]
        super().__init__([positive, "--no-" + positive[2:]], dest, nargs=0, default=default, required=required,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return "/".join(self.option_strings)


def _list_action(item_type: Any):
    class ListAction(argparse.Action):
        """Collects space- and comma-separated values into one list of ``item_type``."""

        def __call__(self, parser, namespace, values, option_string=None):
            items = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
            try:
                setattr(namespace, self.dest, [item_type(v) for v in items])
            except ValueError:
                parser.error(f"argument {option_string}: expected {item_type.__name__} values, got {values}")

    return ListAction


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def render_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    if value is None:
        return "none"
    if value == "":
        return '""'
    return str(value)


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_help(cls: type, name: str) -> str:
    doc = get_attribute_docstring(cls, name)
    text = (doc.docstring_below or doc.comment_inline or doc.comment_above or "").strip()
    return " ".join(text.split())


def _strip_optional(tp: Any) -> Any:
    """``T`` for ``T | None`` (a None default means "decided later"), else ``tp``."""
    rest = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(rest) == 1:
        return rest[0]
    return tp


def cli_fields(cls: type, skip: frozenset[str] | set[str] = frozenset()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in skip and f.metadata.get(NO_CLI, True)]


def add_config(parser: argparse.ArgumentParser, cls: type, prefix: str, *, skip: frozenset[str] | set[str] = frozenset(),
               defaults: dict[str, Any] | None = None, title: str | None = None) -> None:
    """Add one option per field of dataclass ``cls``; values land in ``args.<prefix>__<field>``."""
    group = parser.add_argument_group(title or cls.__name__)
    defaults = defaults or {}
    for f in cli_fields(cls, skip):
        tp = _strip_optional(_hints(cls)[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in defaults:
            default, required = defaults[f.name], False
        elif required:
            default = None
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = field_help(cls, f.name)
        help_text += " (required)" if required else f" (default: {render_default(default)})"
        kwargs: dict[str, Any] = {"dest": f"{prefix}__{f.name}", "default": default, "required": required,
                                  "help": help_text.replace("%", "%%")}
        origin = typing.get_origin(tp)
        if tp is bool:
            group.add_argument(option_name(f.name), action=Flag, **kwargs)
            continue
        if origin is Literal:
            choices = list(typing.get_args(tp))
            kwargs.update(choices=choices, type=type(choices[0]))
        elif origin in (list, tuple):
            item = typing.get_args(tp)[0] if typing.get_args(tp) else str
            if typing.get_origin(item) is Literal:
                choices = typing.get_args(item)
                kwargs.update(metavar="{" + ",".join(map(str, choices)) + "}")
                item = _choice(choices)
            kwargs.update(nargs="+", action=_list_action(item))
            kwargs.setdefault("metavar", getattr(item, "__name__", "value").upper())
        elif tp in (int, float):
            kwargs.update(type=tp, metavar=tp.__name__.upper())
        elif tp is str:
            kwargs.update(type=tp, metavar=f.name.upper())
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {tp!r}")
        group.add_argument(option_name(f.name), **kwargs)


def _choice(choices: tuple[Any, ...]):
    def convert(value: str) -> Any:
        for c in choices:
            if str(c) == value:
                return c
        raise ValueError(value)

    convert.__name__ = "choice"
    return convert


def read_config(args: argparse.Namespace, cls: type, prefix: str, **fixed: Any) -> Any:
    """Build ``cls`` from the parsed options (``fixed`` gives the fields kept off the command line)."""
    values = {f.name: getattr(args, f"{prefix}__{f.name}") for f in cli_fields(cls, set(fixed))
              if hasattr(args, f"{prefix}__{f.name}")}
    try:
        return cls(**values, **fixed)
    except ValueError as e:  # __post_init__ refused a value: one line for the user
        from ..io import BitlensError

        raise BitlensError(str(e)) from None


def typed_options(argv: list[str]) -> set[str]:
    """Field names of the options typed in ``argv`` (``--no-x`` counts as ``x``); abbreviations are refused by the
    parsers, so every typed option is spelled in full."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0]
            name = name[3:] if name.startswith("no-") else name
            names.add(name.replace("-", "_"))
    return names
