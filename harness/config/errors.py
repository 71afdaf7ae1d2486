"""Configuration errors: every problem collected, each with its key path in the user's spelling.

``--set method.fusion_layer=13: must be in [0, 12]``: a :class:`ConfigError` holds (key, message) pairs; pydantic's
errors become such pairs (:func:`pydantic_errors`, with a did-you-mean for unknown keys), and keys that came from
``--set`` or a search axis are re-spelt as the user wrote them (:func:`label_errors`).
"""

from __future__ import annotations

import math
import reprlib
import types
import typing

from pydantic import BaseModel, ValidationError

from harness.registry import close_names

Errors = list[tuple[str, str]]
# The top-level keys of a run or sweep file, in the order the docs list them.
TOP_KEYS = ("include", "name", "seed", "dataset", "task", "backbone", "method", "train", "engine", "tracking",
            "cache_dir", "search", "tune")  # fmt: skip


MAX_MESSAGE = 2000  # characters of one message (a third of it for a key path) kept; echoed input is cut to fit

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxlevel = 80, 80, 8, 8, 8, 3


def shown(value, limit: int = 120) -> str:
    """``repr(value)`` cut to about ``limit`` characters without building the whole of it (a huge or aliased value
    stays cheap to show)."""
    return cut(_REPR.repr(value), limit)


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters, cut)"


class ConfigError(ValueError):
    """Every problem of a configuration, each as (key path in the user's spelling, message)."""

    def __init__(self, errors: Errors):
        short = [(cut(str(key), MAX_MESSAGE // 3), cut(str(msg), MAX_MESSAGE)) for key, msg in errors]
        self.errors = list(dict.fromkeys(short))  # de-duplicated, in order
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{key}: {msg}" if key else msg for key, msg in self.errors)


def unknown_key_msg(key: str, valid: list[str]) -> str:
    close = close_names(key, valid) if len(key) < 200 else []
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown key {shown(key)}{hint}; valid keys: {', '.join(sorted(valid))}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return list(model.model_fields)


def _path(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def pydantic_errors(exc: ValidationError, prefix: str, model: type[BaseModel]) -> Errors:
    """A pydantic ValidationError as (dotted key, message) pairs; unknown keys get did-you-mean."""
    errors = []
    for e in exc.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            valid = TOP_KEYS if not prefix and len(loc) == 1 else _fields_at(model, loc[:-1])
            msg = unknown_key_msg(str(loc[-1]), list(valid or []))
        elif e["type"] == "missing":
            msg = "missing required key"
        else:
            msg = e["msg"].replace("Input should be", "must be").removeprefix("Value error, ")
            if not isinstance(e.get("input"), dict):
                msg += f" (got {shown(e.get('input'))})"
        errors.append((_path(prefix, loc), msg))
    return errors


def _numeric(annotation) -> bool:
    """Whether a field takes numbers and not booleans (``int``, ``float``, ``int | None``, ...)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return bool({int, float} & set(args)) and bool not in args and str not in args
    return False


def _submodel(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def value_errors(model: type[BaseModel], data, prefix: str) -> Errors:
    """What pydantic lets through but a config must not hold: a boolean for a number (``epochs: true`` is 1), and a
    number that is not finite (``lr: .inf``, ``nan``); in nested sections too."""
    errors: Errors = []
    if not isinstance(data, dict):
        return errors
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        where = f"{prefix}.{key}" if prefix else str(key)
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            errors.append((where, f"must be a finite number (got {shown(value)})"))
        if field is None:
            continue
        if isinstance(value, bool) and _numeric(field.annotation):
            errors.append((where, f"must be a number, not a boolean (got {str(value).lower()})"))
        elif (sub := _submodel(field.annotation)) is not None:
            errors += value_errors(sub, value, where)
    return errors


def validate(model: type[BaseModel], data: dict, prefix: str, errors: Errors) -> BaseModel | None:
    """``model.model_validate(data)``, its problems (and :func:`value_errors`) added to ``errors``; None if any."""
    found = value_errors(model, data, prefix)
    errors.extend(found)
    try:
        out = model.model_validate(data)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, prefix, model))
        return None
    return None if found else out


def label_errors(errors: Errors, origins: dict[str, str]) -> Errors:
    """Re-spell error keys that came from ``--set`` or a search axis as the user wrote them."""
    out = []
    for key, msg in errors:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            if head in origins:
                key = origins[head] if n == len(parts) else f"{origins[head]} (at {key})"
                break
        out.append((key, msg))
    return out
