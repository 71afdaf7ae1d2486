"""Configuration errors: every problem collected, each with its key path in the user's spelling.

``--set method.fusion_layer=13: must be in [0, 12]``: a :class:`ConfigError` holds (key, message) pairs; pydantic's
errors become such pairs (:func:`pydantic_errors`, with a did-you-mean for unknown keys), and keys that came from
``--set`` or a search axis are re-spelt as the user wrote them (:func:`label_errors`).
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from harness.registry import close_names

Errors = list[tuple[str, str]]
# The top-level keys of a run or sweep file, in the order the docs list them.
TOP_KEYS = ("include", "name", "seed", "dataset", "task", "backbone", "method", "train", "engine", "tracking",
            "cache_dir", "search", "tune")  # fmt: skip


class ConfigError(ValueError):
    """Every problem of a configuration, each as (key path in the user's spelling, message)."""

    def __init__(self, errors: Errors):
        self.errors = list(dict.fromkeys(errors))  # de-duplicated, in order
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{key}: {msg}" if key else msg for key, msg in self.errors)


def unknown_key_msg(key: str, valid: list[str]) -> str:
    close = close_names(key, valid)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


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
                msg += f" (got {e.get('input')!r})"
        errors.append((_path(prefix, loc), msg))
    return errors


def validate(model: type[BaseModel], data: dict, prefix: str, errors: Errors) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, prefix, model))
        return None


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
