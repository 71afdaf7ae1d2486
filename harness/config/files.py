"""Config files: YAML through ``yaml.safe_load`` with ``include:``, ``--set`` overrides, and the flat dotted spelling.

Keys are spelled the same in YAML, ``--set``, :func:`flatten` (MLflow params) and the typed models.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from harness.config.errors import TOP_KEYS, ConfigError, Errors, unknown_key_msg

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"fusion_layer": 2}}`` -> ``{"method.fusion_layer": 2}`` (MLflow params, ``--set`` spelling)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def deep_merge(base: dict, over: dict, _path: tuple[str, ...] = ()) -> dict:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else is replaced.

    A search axis (``search: {train.lr: {...}}``) is replaced whole, so a file can change its domain kind.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and _path != ("search",):
            out[key] = deep_merge(out[key], value, (*_path, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict:
    """Read a config file and its ``include:`` files (relative to it; merged in order, this file wins)."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(p.name for p in (*_stack[_stack.index(path) :], path))
        raise ConfigError([("include", f"include cycle: {chain}")])
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        where = f"include of {_stack[-1]}" if _stack else "file"
        raise ConfigError([(where, f"cannot read {path}: {e.strerror or e}")]) from e
    except yaml.YAMLError as e:
        raise ConfigError([(str(path), f"invalid YAML: {e}")]) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([(str(path), f"must be a mapping of keys to values, got {type(data).__name__}")])
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError([("include", f"must be a file name or a list of file names, got {includes!r}")])
    merged: dict = {}
    for inc in includes:
        merged = deep_merge(merged, load_yaml(path.parent / inc, (*_stack, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``: the value is parsed with ``yaml.safe_load``.

    Raises:
        ConfigError: not ``key=value``, an empty key segment, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    label = f"--set {text}"
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([(label, "must look like dotted.key=value, e.g. --set train.lr=1e-3")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([(label, f"value is not valid YAML: {e}")]) from e
    return key, as_number(value)


def as_number(value: Any) -> Any:
    """``"1e-3"`` -> ``0.001``: YAML 1.1 reads exponents without a dot as strings; everything else unchanged."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key="a.b"``, creating mappings on the way.

    Raises:
        ValueError: a segment on the way is not a mapping.
    """
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is {nxt!r}, not a section, so it has no key {parts[i + 1]!r}")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, Any, str]], Errors]:
    """Parse every ``--set``; returns ([(key, value, label)], errors)."""
    parsed, errors = [], []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            errors.extend(e.errors)
            continue
        if key.split(".")[0] not in TOP_KEYS or key.split(".")[0] == "include":
            top = key.split(".")[0]
            errors.append((f"--set {text}", unknown_key_msg(top, [k for k in TOP_KEYS if k != "include"])))
            continue
        parsed.append((key, value, f"--set {text}"))
    return parsed, errors


def apply_overrides(d: dict, parsed: list[tuple[str, Any, str]], origins: dict[str, str]) -> Errors:
    """Apply parsed overrides to ``d`` in place, recording ``origins[key] = label``; returns errors."""
    errors = []
    for key, value, label in parsed:
        try:
            set_dotted(d, key, value)
        except ValueError as e:
            errors.append((label, str(e)))
            continue
        origins[key] = label
    return errors
