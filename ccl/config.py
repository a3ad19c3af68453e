"""Strict mapping from TOML files and `key=value` overrides onto frozen dataclasses.

An unknown key or a value of the wrong type is a CclError naming the key, so a typo in
a config file never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ccl.errors import CclError
from ccl.io import open_regular

T = TypeVar("T")
_FLOAT_MAX = sys.float_info.max  # a larger int would become inf as a float


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except CclError as e:
                errors.append(str(e))
        raise CclError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CclError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise CclError(f"{where}: expected a table, got {value!r}")
        return from_dict(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise CclError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CclError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # NaN passes every range check written as a comparison (`lr <= 0` is False):
            # refused here, for every setting at once; an infinity is no setting either.
            if not (-_FLOAT_MAX <= value <= _FLOAT_MAX):
                raise CclError(f"{where}: expected a finite number, got {str(value)[:40]}")
            return float(value)
        raise CclError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise CclError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CclError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise CclError(f"{where}: {e}") from None


def replace(obj: T, changes: dict[str, Any], where: str = "config") -> T:
    """A copy of dataclass `obj` with `changes` applied, checked like `from_dict`."""
    merged = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    merged.update(changes)
    return from_dict(type(obj), merged, where)


MAX_TOML_BYTES = 1 << 20  # a settings file is a few lines; more is the wrong file


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open_regular(path, MAX_TOML_BYTES, "config file", links=True) as f:
            text = f.read(MAX_TOML_BYTES + 1)  # the size again: a file may grow after it was checked
        if len(text) > MAX_TOML_BYTES:
            raise CclError(f"{path}: {len(text) - 1:,}+ bytes is too large for a config file")
        return tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CclError(f"{path}: unreadable config file ({e})") from None
    except RecursionError:
        raise CclError(f"{path}: unreadable config file (nested too deeply)") from None
    except OSError as e:
        raise CclError(f"{path}: cannot read config file ({e.strerror})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a TOML value (`iterations=200`, `norm="batch"`, bare strings allowed)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CclError(f"--set {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as batch is a string
    return key.strip(), value


def to_dict(obj: Any) -> Any:
    """JSON-ready dict of a (nested) dataclass."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def preset_settings(cls: type[T], preset: str, overrides: dict[str, Any], explicit: bool = False) -> T:
    """Settings dataclass `cls`: its defaults <- the preset <- `overrides`.

    Args:
        preset: a preset name (configs/<name>.toml) or a .toml file path.
        overrides: single settings, e.g. from `--set key=value`.
        explicit: the user named the preset, so a missing file is an error (a method's
            own default preset may not exist).
    """
    return from_dict(cls, {**preset_values(preset, explicit), **overrides}, preset_where(preset))


def preset_values(preset: str, explicit: bool = False) -> dict[str, Any]:
    """A preset's values as written (its `extends` chain resolved), for a caller that splits
    them among settings dataclasses; {} for a method's own preset that does not exist."""
    return _preset_values(preset) if _preset_path(preset).exists() or explicit else {}


def preset_where(preset: str) -> str:
    """How an error names the preset's settings."""
    path = _preset_path(preset)
    return f"settings ({path.name if path.exists() else preset})"


def _preset_path(preset: str) -> Path:
    from ccl.resources import resource_dir
    return Path(preset) if preset.endswith(".toml") else resource_dir("configs") / f"{preset}.toml"


def _preset_values(preset: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's values; `extends = "other"` first loads that preset (variants stay one
    line of difference, e.g. mtt = pad with the scheduler off)."""
    from ccl.resources import resource_dir
    path = _preset_path(preset)
    if not path.exists() and not preset.endswith(".toml"):
        known = sorted(p.stem for p in resource_dir("configs").glob("*.toml"))
        raise CclError(f"unknown preset {preset!r}; shipped presets: {', '.join(known)}")
    values = read_toml(path)
    base = values.pop("extends", None)
    if base is None:
        return values
    if base in seen:
        raise CclError(f"{path}: presets extend each other in a loop ({' -> '.join(seen + (base,))})")
    return {**_preset_values(base, seen + (preset,)), **values}
