"""Configuration files: YAML read with located errors, and mappings validated into (nested) dataclasses.

An unknown key is an error that lists the valid keys of its section; a value of the wrong type names the key
and the type expected. Recipes and VISA configurations are both built this way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from vlret.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (not "the last wins")."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"line {line}: key {key!r} appears twice (first on line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "file") -> dict:
    """Parse a YAML file into a mapping (empty file: {}); a duplicate key is an error."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}"
        )
    return data


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type hint (ints widen to floats; lists are checked item by item)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        options = [h for h in options if h is not type(None)]
        if len(options) > 1:  # int | str: the first type the value is
            for option in options:
                try:
                    return _check_type(value, option, where)
                except ConfigError:
                    continue
            names = " or ".join(getattr(h, "__name__", str(h)) for h in options)
            raise ConfigError(f"{where}: expected {names}, got {value!r}")
        hint = options[0]
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    base = origin or hint
    if base is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, base) or (base in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")
    if base is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        if item_hint is not Any:
            value = [_check_type(v, item_hint, f"{where}[{k}]") for k, v in enumerate(value)]
    return value


def build_dataclass(cls: type, data: Any, where: str = ""):
    """An instance of dataclass ``cls`` from a mapping, nested dataclass fields included; ``where`` is the
    dotted path of this section, for messages."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    kwargs = {}
    for key, value in data.items():
        hint, sub = hints[key], f"{where}.{key}" if where else key
        kwargs[key] = (
            build_dataclass(hint, value, sub)
            if dataclasses.is_dataclass(hint)
            else _check_type(value, hint, sub)
        )
    return cls(**kwargs)
