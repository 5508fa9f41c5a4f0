"""JSON records read into dataclasses: a value is checked against its field's annotation, so the dataclass is
the schema (the model manifest and fer-infer's progress record use it). A nested dataclass is a JSON object,
checked when it is built; a tuple field is left to its own parser."""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any


def wrong_field(cls: type, record: dict[str, Any], within: str = "") -> str | None:
    """The first of ``record``'s values that does not fit its field of ``cls``, as "'key' must be a string, not 5"
    ("'key' in <within> must ..." with ``within``); None if all fit (keys that are not fields are the caller's
    matter)."""
    hints = field_types(cls)
    for k, v in record.items():
        if k in hints and not fits(v, hints[k]):
            return f"{k!r}{f' in {within}' if within else ''} must be {kind(hints[k])}, not {excerpt(v)}"
    return None


def unknown_keys(cls: type, record: dict[str, Any]) -> list[str]:
    """``record``'s keys that are not fields of the dataclass ``cls``, sorted."""
    return sorted(set(record) - set(field_names(cls)))


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass's field names."""
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The dataclass's field annotations, resolved."""
    return typing.get_type_hints(cls)


def fits(value: Any, t: Any) -> bool:
    """Whether a JSON value can stand for a field of type ``t``."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any or origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if t is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(fits(e, args[0]) for e in value)
    if origin is dict or dataclasses.is_dataclass(t):
        return isinstance(value, dict) and all(isinstance(k, str) and (not args or fits(e, args[1]))
                                               for k, e in value.items())
    if t in (int, float):  # JSON numbers; true/false are not numbers here
        return isinstance(value, (int, float) if t is float else int) and not isinstance(value, bool)
    return isinstance(value, t)


def kind(t: Any, plural: bool = False) -> str:
    """``t`` in JSON words for an error message: "a string", "a string or null", "a list of strings"."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(kind(a, plural) for a in args)
    if origin is list:
        return ("lists" if plural else "a list") + f" of {kind(args[0], plural=True)}"
    one, many = (("an object", "objects") if origin is dict or dataclasses.is_dataclass(t) else
                 {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
                  bool: ("true or false", "booleans"), type(None): ("null", "nulls")}.get(t, (str(t), str(t))))
    return many if plural else one


def excerpt(value: Any) -> str:
    """``value`` as JSON, cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
