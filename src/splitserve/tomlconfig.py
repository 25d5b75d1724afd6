"""TOML tables into dataclasses, type-checked: the one config reader the edge server and training share.

Every key must name a field (a typo must not silently change nothing), and every value must have
its field's type: a bool stays a bool, an int field takes only whole numbers, a float field any
number, a string / list / table the same kind. A field that is itself a dataclass takes a table.
Errors are raised as the caller's own error class, with where the value came from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read_toml(path: str | Path, error: type[ValueError]) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None


def fill(obj: T, data: Any, where: str, error: type[ValueError]) -> T:
    """Set ``obj``'s fields from ``data`` (keys may spell ``_`` as ``-``); returns ``obj``."""
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a table, got {type(data).__name__}")
    known = {f.name for f in fields(obj)}  # type: ignore[arg-type]
    unknown = sorted(k for k in data if k.replace("-", "_") not in known)
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    for key, value in data.items():
        name = key.replace("-", "_")
        current = getattr(obj, name)
        if is_dataclass(current):
            fill(current, value, f"{where} [{key}]", error)
        else:
            setattr(obj, name, _checked(current, value, f"{where}: {key} = {value!r}", error))
    return obj


def _checked(default: Any, value: Any, what: str, error: type[ValueError]) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and float(value).is_integer()
        value = int(value) if ok else value
    elif isinstance(default, float):
        ok = number
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise error(f"{what}: expected {type(default).__name__}")
    return value
