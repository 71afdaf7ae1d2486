"""Config files: YAML through ``yaml.safe_load`` with ``include:``, ``--set`` overrides, and the flat dotted spelling.

Keys are spelled the same in YAML, ``--set``, :func:`flatten` (MLflow params) and the typed models. Hostile input is
refused before anything is built from it: a file over :data:`MAX_BYTES`, YAML of more than :data:`MAX_NODES` nodes
once its aliases are expanded (a 400-byte "billion laughs" expands to 10^8 nodes), an alias that contains itself,
nesting too deep to parse, and text that is not UTF-8 are configuration errors.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from harness.config.errors import TOP_KEYS, ConfigError, Errors, cut, shown, unknown_key_msg

MAX_BYTES = 1 << 20  # a config file is a few kB; the largest accepted
MAX_NODES = 100_000  # YAML nodes (scalars, lists, mappings) once aliases are expanded

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


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded (an alias is the anchored node itself: counted once, used
    many times); stops counting past :data:`MAX_NODES`."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise ValueError("an alias refers to a node that contains it (a recursive structure)")
    open_.add(key)
    n = 1
    children = node.value if isinstance(node, yaml.SequenceNode) else ()
    if isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    for child in children:
        n += _expanded_size(child, memo, open_)
        if n > MAX_NODES:
            break
    open_.discard(key)
    memo[key] = n
    return n


def safe_yaml(text: str, where: str):
    """``yaml.safe_load(text)`` for configuration: more than :data:`MAX_NODES` nodes once aliases are expanded, a
    recursive alias or too deep a nesting is a :class:`ConfigError` at ``where``, checked before anything is built.

    Raises:
        ConfigError: as above, or the text is not YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, {}, set())
        if n > MAX_NODES:
            raise ConfigError([(where, f"has more than {MAX_NODES:,} YAML values once its aliases (*name) are "
                                       "expanded; write the values out, or use fewer aliases")])  # fmt: skip
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError([(where, f"invalid YAML: {cut(str(e), 300)}")]) from e
    except ValueError as e:
        raise ConfigError([(where, f"invalid YAML: {e}")]) from e
    except RecursionError as e:
        raise ConfigError([(where, "invalid YAML: nested too deeply")]) from e
    finally:
        loader.dispose()


def read_text(path: Path, where: str) -> str:
    """A config file's text: UTF-8, at most :data:`MAX_BYTES`. Raises :class:`ConfigError` naming ``where``."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError([(where, f"{path} is {size:,} bytes; a config file may have at most {MAX_BYTES:,}")])
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([(where, f"cannot read {path}: {e.strerror or e}")]) from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError([(where, f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (save it "
                                   "as UTF-8)")]) from e  # fmt: skip


def load_yaml(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict:
    """Read a config file and its ``include:`` files (relative to it; merged in order, this file wins).

    Raises:
        ConfigError: every include that cannot be read (all of them named), or the first problem of this file.
    """
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(p.name for p in (*_stack[_stack.index(path) :], path))
        raise ConfigError([("include", f"include cycle: {chain}")])
    where = f"include of {_stack[-1]}" if _stack else "file"
    data = safe_yaml(read_text(path, where), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([(str(path), f"must be a mapping of keys to values, got {type(data).__name__}")])
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError([("include", f"must be a file name or a list of file names, got {shown(includes)}")])
    merged: dict = {}
    errors: Errors = []
    for inc in includes:
        try:
            merged = deep_merge(merged, load_yaml(path.parent / inc, (*_stack, path)))
        except ConfigError as e:  # go on: every missing include is named at once
            errors += e.errors
    if errors:
        raise ConfigError(errors)
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
        value = safe_yaml(raw, label) if raw.strip() else None
    except ConfigError as e:
        raise ConfigError([(label, f"value is not valid YAML: {msg.removeprefix('invalid YAML: ')}")
                           for _, msg in e.errors]) from e  # fmt: skip
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
