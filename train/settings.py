"""Stored settings (a run's config.json sections) read back into their dataclasses, one rule for all of them:
a key that is not a field is refused by name, never dropped."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

_T = TypeVar("_T")


def from_stored(cls: type[_T], stored: Any, what: str) -> _T:
    """``cls(**stored)``; ValueError naming ``what`` settings that ``cls`` does not have (a config.json from a newer
    fer-train) or a section that is not an object."""
    if not isinstance(stored, dict):
        raise ValueError(f"the {what} settings must be a JSON object, not {type(stored).__name__}")
    unknown = sorted(set(stored) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown {what} settings {', '.join(unknown)} (a config.json from a newer fer-train?)")
    return cls(**stored)
