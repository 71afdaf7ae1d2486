"""Run and sweep configuration: YAML (with ``include:``) + ``--set`` overrides -> validated, typed specs.

A file is one run, or a sweep when it has ``search:`` and/or ``tune:`` (see :mod:`harness.search`). Named
sections (``dataset``, ``task``, ``backbone``, ``method``) are validated by the ``Config`` class of the
registry entry they name; every problem is collected and reported at once by :class:`ConfigError`, each with its
key path in the user's spelling (``--set method.fusion_layer=13: must be ...``).

Keys are spelled the same in YAML, ``--set``, :func:`flatten` (MLflow params) and the typed models.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.registry import BACKBONES, DATASETS, ENGINES, FORMATS, METHODS, TASKS, UnknownNameError, close_names

Errors = list[tuple[str, str]]
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
TOP_KEYS = ("include", "name", "seed", "dataset", "task", "backbone", "method", "train", "engine", "tracking",
            "cache_dir", "search", "tune")  # fmt: skip


class ConfigError(ValueError):
    """Every problem of a configuration, each as (key path in the user's spelling, message)."""

    def __init__(self, errors: Errors):
        self.errors = list(dict.fromkeys(errors))  # de-duplicated, in order
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{key}: {msg}" if key else msg for key, msg in self.errors)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Strict):
    """Optimisation and loop settings shared by every method (AdamW + warmup + cosine decay)."""

    epochs: int = Field(10, ge=1, description="number of passes over the training split")
    batch_size: int = Field(32, ge=1, description="training clips per optimiser step (all workers together)")
    eval_batch_size: int = Field(128, ge=1, description="clips per forward pass when evaluating")
    lr: float = Field(1.0e-3, gt=0, description="peak learning rate, reached at the end of warmup")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decoupled weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup length in epochs (0 = none)")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine decay")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null disables clipping")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per trial; null = torch default")
    frozen_cache: bool = Field(
        False,
        description="compute a frozen backbone's activations before its first trainable layer once per clip and reuse "
        "them across epochs and trials (cache_dir/activations; off with augmentation, dropout or drop path)",
    )
    mixup_alpha: float = Field(0.0, ge=0, description="mixup: each batch mixed with its reversal by w ~ Beta(α, α), "
                               "labels as soft targets (MBT: 0.5); 0 = no mixup (harness/augment.py)")  # fmt: skip
    modality_mixup: bool = Field(False, description="MBT's modality-mixup: an independent w per modality, each "
                                 "modality's logits trained on its own mixed label; needs mixup_alpha > 0")  # fmt: skip
    modality_dropout: float = Field(0.0, ge=0, le=1, description="probability that a training clip loses one "
                                    "modality (audio or video, 50/50; never both); 0 = off")  # fmt: skip

    @model_validator(mode="after")
    def _mixup_needs_alpha(self) -> TrainConfig:
        if self.modality_mixup and self.mixup_alpha <= 0:
            raise ValueError("modality_mixup=true needs mixup_alpha > 0 (it is mixup with one weight per modality)")
        return self


class EngineConfig(_Strict):
    """Which training engine runs the trial; an engine with settings of its own subclasses this as its ``Config``."""

    name: str = Field("torch", description="registered engine (`harness ls engines`)")


class TrackingConfig(_Strict):
    """Where results are logged."""

    uri: str | None = Field(None, description="MLflow tracking URI; null = --tracking-uri, $MLFLOW_TRACKING_URI, local")
    experiment: str | None = Field(None, description="MLflow experiment; null = the run's or sweep's name")


class _TopLevel(_Strict):
    name: str = Field(description="run name (default: the file stem); for sweeps the MLflow experiment")
    seed: int = Field(0, ge=0, description="seed of data order, initialisation and augmentation")
    dataset: dict[str, Any] = Field(description="dataset card name + overrides of its format's parameters")
    task: dict[str, Any] = Field(default_factory=dict, description="task name + its Config fields")
    backbone: dict[str, Any] = Field(default_factory=lambda: {"name": "tiny"}, description="preset + overrides")
    method: dict[str, Any] = Field(description="fusion method name + its Config fields")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation settings")
    engine: dict[str, Any] = Field(default_factory=dict, description="engine name + its Config fields")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings")
    cache_dir: str | None = Field(None, description="generated/prepared data cache; null = $HARNESS_CACHE or ~/.cache")


@dataclass
class DatasetSpec:
    """A resolved dataset: card name, file format, the card itself and the validated format parameters."""

    name: str
    format: str
    card: dict
    params: BaseModel


@dataclass
class RunSpec:
    """One fully resolved and validated run. Build it with :func:`load_config` or :meth:`from_dict`."""

    name: str
    seed: int
    dataset: DatasetSpec
    task_name: str
    task: BaseModel
    backbone: BaseModel
    method: BaseModel
    train: TrainConfig
    engine: EngineConfig
    tracking: TrackingConfig
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested JSON-able dict in the YAML spelling; :meth:`from_dict` rebuilds the same spec."""
        return {
            "name": self.name,
            "seed": self.seed,
            "dataset": {"name": self.dataset.name, **self.dataset.params.model_dump(mode="json")},
            "task": {"name": self.task_name, **self.task.model_dump(mode="json")},
            "backbone": self.backbone.model_dump(mode="json"),
            "method": self.method.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            "engine": self.engine.model_dump(mode="json"),
            "tracking": self.tracking.model_dump(mode="json"),
            "cache_dir": self.cache_dir,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Validate a run dict (YAML spelling, e.g. from :meth:`to_dict`). Raises :class:`ConfigError`."""
        return resolve_run(d)


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


# --- YAML, include, overrides ----------------------------------------------------------------------------------


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
            errors.append((f"--set {text}", _unknown_key_msg(top, [k for k in TOP_KEYS if k != "include"])))
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


# --- validation -------------------------------------------------------------------------------------------------


def _unknown_key_msg(key: str, valid: list[str]) -> str:
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
            msg = _unknown_key_msg(str(loc[-1]), list(valid or []))
        elif e["type"] == "missing":
            msg = "missing required key"
        else:
            msg = e["msg"].replace("Input should be", "must be").removeprefix("Value error, ")
            if not isinstance(e.get("input"), dict):
                msg += f" (got {e.get('input')!r})"
        errors.append((_path(prefix, loc), msg))
    return errors


def _validate(model: type[BaseModel], data: dict, prefix: str, errors: Errors) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, prefix, model))
        return None


def _lookup(registry, section: str, name: Any, errors: Errors, attr: str | None = None) -> Any:
    """Resolve ``name`` in ``registry`` (and its ``attr``); record an error at ``section.name`` instead of raising."""
    key = f"{section}.name"
    if not isinstance(name, str):
        errors.append((key, f"must be the name of a registered {registry.kind}, got {name!r}"))
        return None
    try:
        obj = registry.get(name)
        return getattr(obj, attr) if attr else obj
    except UnknownNameError as e:
        errors.append((key, str(e)))
    except (ImportError, AttributeError) as e:
        errors.append((key, f"{registry.kind} {name!r} cannot be loaded: {type(e).__name__}: {e}"))
    return None


def _named(model: type[BaseModel], name: str, fields: dict) -> dict:
    """Section fields as the model takes them: with ``name`` only if the model has such a field."""
    return {**fields, "name": name} if "name" in model.model_fields else fields


def _resolve(d: dict) -> tuple[RunSpec | None, Errors]:
    errors: Errors = []
    top = _validate(_TopLevel, d, "", errors)
    if top is None:
        raw = {k: d.get(k) for k in ("dataset", "task", "backbone", "method")}
        top = _TopLevel.model_construct(**{k: v for k, v in raw.items() if isinstance(v, dict)})
    for section in ("dataset", "method"):
        if isinstance(getattr(top, section, None), dict) and "name" not in getattr(top, section):
            errors.append((f"{section}.name", f"missing required key; see `harness ls {section}s`"))

    dataset = params = card = loader = None
    ds = getattr(top, "dataset", None) or {}
    if "name" in ds:
        card = _lookup(DATASETS, "dataset", ds["name"], errors)
    if card is not None:
        loader = _lookup(FORMATS, "dataset", card["format"], errors)
        fmt_cls = getattr(loader, "Config", None)
        if loader is not None and fmt_cls is None:
            errors.append(("dataset.name", f"format {card['format']!r} of card {card['path']} has no Config class"))
        if fmt_cls is not None:
            fields = {**card["params"], **{k: v for k, v in ds.items() if k != "name"}}
            params = _validate(fmt_cls, fields, "dataset", errors)
        if params is not None:
            dataset = DatasetSpec(ds["name"], card["format"], card, params)

    task = None
    card_task = (card or {}).get("task", {})
    card_task = {"name": card_task} if isinstance(card_task, str) else card_task
    task_raw = {**card_task, **(getattr(top, "task", {}) or {})}
    task_name = task_raw.pop("name", "classification")
    # with an unknown card the default task is unknown too: don't pile a guessed task's errors on top
    guessed = card is None and "name" not in (getattr(top, "task", {}) or {})
    task_cls = None if guessed else _lookup(TASKS, "task", task_name, errors, "Config")
    if task_cls is not None:
        task = _validate(task_cls, _named(task_cls, task_name, task_raw), "task", errors)

    backbone = None
    bb = dict(getattr(top, "backbone", None) or {"name": "tiny"})
    bb_name = bb.pop("name", "tiny")
    preset = _lookup(BACKBONES, "backbone", bb_name, errors)
    if preset is not None:
        from harness.backbones import BackboneConfig

        backbone = _validate(BackboneConfig, {**preset(), **bb, "name": bb_name}, "backbone", errors)

    method = None
    m = dict(getattr(top, "method", None) or {})
    if "name" in m:
        m_cls = _lookup(METHODS, "method", m["name"], errors, "Config")
        if m_cls is not None:
            method = _validate(m_cls, _named(m_cls, m.pop("name"), m), "method", errors)
    if backbone is not None and hasattr(backbone, "check"):
        input_spec = getattr(loader, "input_spec", None) if dataset is not None else None
        errors += backbone.check(input_spec(params) if callable(input_spec) else None)
    if method is not None and backbone is not None and hasattr(method, "check"):
        for key, msg in method.check_family(backbone) or method.check(backbone):
            errors.append((key if key.split(".")[0] in TOP_KEYS else f"method.{key}", msg))

    train = getattr(top, "train", None)
    if isinstance(train, TrainConfig) and train.min_lr > train.lr:
        errors.append(("train.min_lr", f"must be <= train.lr = {train.lr} (got {train.min_lr})"))
    engine = None
    eng = dict(getattr(top, "engine", None) or {})
    eng_cls = _lookup(ENGINES, "engine", eng.get("name", "torch"), errors)
    if eng_cls is not None:
        engine = _validate(getattr(eng_cls, "Config", EngineConfig), {**eng, "name": eng.get("name", "torch")},
                           "engine", errors)  # fmt: skip
    if engine is not None and isinstance(train, TrainConfig) and hasattr(engine, "check"):
        errors += engine.check(train)

    if errors:
        return None, errors
    spec = RunSpec(top.name, top.seed, dataset, task_name, task, backbone, method, top.train, engine,
                   top.tracking, top.cache_dir)  # fmt: skip
    return spec, []


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


def resolve_run(d: dict[str, Any], origins: dict[str, str] | None = None) -> RunSpec:
    """Validate one run dict (YAML spelling, includes already merged) into a :class:`RunSpec`.

    Args:
        d: the run's keys (``name``, ``seed``, ``dataset``, ``method``, ...).
        origins: dotted key -> how the user wrote it (``"--set method.fusion_layer=13"``), for messages.

    Raises:
        ConfigError: every problem found, at once.
    """
    spec, errors = _resolve(d)
    if errors:
        raise ConfigError(label_errors(errors, origins or {}))
    return spec


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec | Any:
    """Load a run or sweep file with its includes and ``--set`` overrides, and validate all of it.

    Args:
        path: the YAML file.
        overrides: ``"dotted.key=value"`` strings; values are parsed with ``yaml.safe_load``. In a sweep, an
            override of a searched key replaces that axis.

    Returns:
        A :class:`RunSpec`, or a :class:`harness.search.SweepSpec` when the file has ``search:`` or ``tune:``.

    Raises:
        ConfigError: every problem found, at once.
    """
    raw = load_yaml(path)
    parsed, errors = parse_overrides(overrides)
    if "search" in raw or "tune" in raw:
        from harness.search import build_sweep

        return build_sweep(raw, parsed, errors, Path(path))
    origins: dict[str, str] = {}
    errors += apply_overrides(raw, parsed, origins)
    raw.setdefault("name", Path(path).stem)
    spec, run_errors = _resolve(raw)
    errors += label_errors(run_errors, origins)
    if errors:
        raise ConfigError(errors)
    return spec


def __getattr__(name: str) -> Any:  # SweepSpec and Domain live in harness.search (kept < 300 lines each)
    if name in ("SweepSpec", "Domain", "TuneConfig"):
        import harness.search

        return getattr(harness.search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DatasetSpec",
    "EngineConfig",
    "RunSpec",
    "TrackingConfig",
    "TrainConfig",
    "deep_merge",
    "flatten",
    "load_config",
    "load_yaml",
    "parse_override",
    "resolve_run",
    "set_dotted",
]
