"""Serialisable dataclass configs: simple-parsing's serialisation, strict about what it reads.

Every field has a default, so a config written by an older version still loads; an unknown field, a value of the
wrong type (a string or 16.5 for an int, a value outside a Literal) or one that ``__post_init__`` refuses raises
``ValueError`` naming the class and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from simple_parsing.helpers.serialization import Serializable as _Serializable

T = TypeVar("T", bound="Serializable")


class Serializable(_Serializable, decode_into_subclasses=False):
    """Mixin for dataclasses: ``to_dict``/``from_dict``, ``save``/``load`` (JSON or YAML) from simple-parsing."""

    @classmethod
    def from_dict(cls: type[T], data: Any, drop_extra_fields: bool | None = False) -> T:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown and not drop_extra_fields:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(map(str, unknown))}")
        data = {k: v for k, v in data.items() if k in names}
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation this module cannot resolve: leave the checks to __post_init__
            hints = {}
        for name, value in data.items():
            if name in hints and not _fits(hints[name], value):
                raise ValueError(f"{cls.__name__}: {name} must be {_describe(hints[name])}, not {value!r}")
        try:
            return super().from_dict(data, drop_extra_fields=True)
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"{cls.__name__}: {e}") from None


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
