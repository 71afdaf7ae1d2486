"""Run and sweep configuration: YAML (with ``include:``) + ``--set`` overrides -> validated, typed specs.

| module | owns |
| --- | --- |
| ``errors`` | :class:`ConfigError` (every problem at once, key paths in the user's spelling), did-you-mean |
| ``files`` | YAML (``safe_load``), ``include:``, ``--set`` parsing, the flat dotted spelling (:func:`flatten`) |
| ``run`` | the run schema (``train``, ``engine``, ``tracking``; named sections by their registry entry's ``Config``) |
| ``sweep`` | the sweep schema (``search:`` axes and variants, ``tune:``) |

A file is one run, or a sweep when it has ``search:`` and/or ``tune:``. Keys are spelled the same in YAML, ``--set``,
:func:`flatten` (MLflow params) and the typed models.
"""

from __future__ import annotations

from pathlib import Path

from harness.config.errors import ConfigError, Errors, label_errors
from harness.config.files import (
    apply_overrides,
    deep_merge,
    flatten,
    load_yaml,
    parse_override,
    parse_overrides,
    set_dotted,
)
from harness.config.run import DatasetSpec, EngineConfig, RunSpec, TrackingConfig, TrainConfig, _resolve, resolve_run
from harness.config.sweep import Domain, SweepSpec, TuneConfig, build_sweep


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec | SweepSpec:
    """Load a run or sweep file with its includes and ``--set`` overrides, and validate all of it.

    Args:
        path: the YAML file.
        overrides: ``"dotted.key=value"`` strings; values are parsed with ``yaml.safe_load``. In a sweep, an
            override of a searched key replaces that axis.

    Returns:
        A :class:`RunSpec`, or a :class:`SweepSpec` when the file has ``search:`` or ``tune:``.

    Raises:
        ConfigError: every problem found, at once.
    """
    raw = load_yaml(path)
    parsed, errors = parse_overrides(overrides)
    if "search" in raw or "tune" in raw:
        return build_sweep(raw, parsed, errors, Path(path))
    origins: dict[str, str] = {}
    errors += apply_overrides(raw, parsed, origins)
    raw.setdefault("name", Path(path).stem)
    spec, run_errors = _resolve(raw)
    errors += label_errors(run_errors, origins)
    if errors:
        raise ConfigError(errors)
    return spec


__all__ = [
    "ConfigError",
    "DatasetSpec",
    "Domain",
    "EngineConfig",
    "Errors",
    "RunSpec",
    "SweepSpec",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "deep_merge",
    "flatten",
    "load_config",
    "load_yaml",
    "parse_override",
    "resolve_run",
    "set_dotted",
]
