"""Serialisable dataclass configs: simple-parsing's serialisation, strict about what it reads.

Every field has a default, so a config written by an older version still loads; an unknown field, a value of the
wrong type or one that ``__post_init__`` refuses raises ``ValueError`` naming the class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from simple_parsing.helpers.serialization import Serializable as _Serializable

T = TypeVar("T", bound="Serializable")


class Serializable(_Serializable, decode_into_subclasses=False):
    """Mixin for dataclasses: ``to_dict``/``from_dict``, ``save``/``load`` (JSON or YAML) from simple-parsing."""

    @classmethod
    def from_dict(cls: type[T], data: Any, drop_extra_fields: bool | None = False) -> T:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown and not drop_extra_fields:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(map(str, unknown))}")
        try:
            return super().from_dict({k: v for k, v in data.items() if k in names}, drop_extra_fields=True)
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"{cls.__name__}: {e}") from None
