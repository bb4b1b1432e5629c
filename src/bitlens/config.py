"""Serialisable dataclass configs: JSON in and out, with clear errors for unknown keys."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Serializable")


class Serializable:
    """Mixin for dataclasses: ``to_dict``/``from_dict`` and JSON files. Every field must have a default,
    so configs written by older versions still load."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build from a dict (e.g. a JSON file): unknown fields and values of the wrong type (a string or 16.5
        for an int, a value outside a Literal) are refused with a ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation this module cannot resolve: leave the checks to __post_init__
            hints = {}
        for name, value in data.items():
            if name in hints and not _fits(hints[name], value):
                raise ValueError(f"{cls.__name__}: {name} must be {_describe(hints[name])}, not {value!r}")
        return cls(**data)

    @classmethod
    def load_json(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _fits(tp: Any, value: Any) -> bool:
    """Whether ``value`` (as read from JSON) is a valid ``tp``; types this does not know are accepted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple)) and (
            origin is not list or not args or all(_fits(args[0], v) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(tp, f"a {getattr(tp, '__name__', str(tp))}")
