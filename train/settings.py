"""Stored settings (a run's config.json sections) read back into their dataclasses, one rule for all of them:
a key that is not a field is refused by name, never dropped."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from fer_runtime.typed_json import unknown_keys, wrong_field

_T = TypeVar("_T")


def stored_object(stored: Any, what: str) -> dict[str, Any]:
    """``stored`` itself if it is a JSON object; else ValueError naming the ``what`` settings."""
    if not isinstance(stored, dict):
        raise ValueError(f"the {what} settings must be a JSON object, not {type(stored).__name__}")
    return stored


def from_stored(cls: type[_T], stored: Any, what: str) -> _T:
    """``cls(**stored)``; ValueError naming ``what`` settings that ``cls`` does not have (a config.json from a newer
    fer-train), a value of the wrong JSON type (``"epochs": "40"``) or a section that is not an object. A value
    that is already a settings object (a nested section read first) is taken as it is."""
    unknown = unknown_keys(cls, stored_object(stored, what))
    if unknown:
        raise ValueError(f"unknown {what} settings {', '.join(unknown)} (a config.json from a newer fer-train?)")
    wrong = wrong_field(cls, {k: v for k, v in stored.items() if not dataclasses.is_dataclass(v)})
    if wrong:
        raise ValueError(f"{what} settings: {wrong}")
    return cls(**stored)
