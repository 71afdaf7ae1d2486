"""The sweep schema: a base run plus ``search:`` axes and variants, and ``tune:`` settings; see :class:`SweepSpec`.

```yaml
search:
  seed: {grid: [0, 1, 2]}                       # grid: every value; choice: [...]: one drawn per sample
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}      # uniform: [a, b], loguniform: [a, b] (0 < a), randint: [a, b)
  variants:                                     # union of sub-grids (dotted key -> list = grid, or a scalar)
    - {method.name: [vanilla, mbt], method.fusion_layer: [0, 1, 2, 3, 4]}
    - {method.name: [late, audio_only, video_only]}
tune: {num_samples: 1, metric: val/top1, mode: max}
# exploration only: stop weak trials early (rows of such sweeps are marked not budget-matched in reports)
# tune: {scheduler: asha, asha: {grace_period: 1, reduction_factor: 3}}
```
Trials = variants x grid values of every grid axis x ``tune.num_samples``. Before anything starts, every variant
and every value of every grid/choice axis (the bounds of random domains) is validated against the base.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.config.errors import ConfigError, Errors, label_errors, shown, unknown_key_msg, validate
from harness.config.files import apply_overrides, as_number, set_dotted
from harness.config.run import RunSpec, _resolve, resolve_run

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class Resources(BaseModel):
    """Resources of one trial (Ray Tune placement)."""

    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1, ge=0, description="CPU cores per trial")
    gpu: float | None = Field(None, ge=0, description="GPUs per trial, fractions share one (e.g. 0.25: four trials "
                              "per GPU); null = one GPU per trial when the cluster has GPUs, else 0")  # fmt: skip


class AshaConfig(BaseModel):
    """ASHA early stopping (``tune.scheduler: asha``): at ``grace_period`` × ``reduction_factor``^k epochs, a trial
    goes on only if its ``tune.metric`` is in the best 1/``reduction_factor`` of the trials that reached that point."""

    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1, ge=1, description="epochs every trial trains before it can be stopped")
    reduction_factor: float = Field(3, gt=1, description="1/reduction_factor of the trials go on at each milestone")


class TuneConfig(BaseModel):
    """How Ray Tune runs the sweep's trials."""

    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(1, ge=1, description="samples per grid point: the drawn axes (choice, uniform, ...) "
                             "drawn once per sample; seeds are the replicates, so a grid-only sweep refuses more "
                             "than 1 (use search.seed: {grid: [0, 1, 2]}), and without a seed axis each sample "
                             "draws its own seed")  # fmt: skip
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="trials at once at most; null = as resources allow"
    )
    resources: Resources = Field(default_factory=Resources, description="resources of each trial")
    metric: str = Field("val/top1", description="metric that ranks trials (and picks the best checkpoint)")
    mode: Literal["max", "min"] = Field("max", description="whether a larger or a smaller metric is better")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (from its last checkpoint); "
                              "-1 = without limit")  # fmt: skip
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="fifo: every trial trains its full budget (paper "
                                               "tables); asha: stop weak trials early (exploration; not budget-"
                                               "matched)")  # fmt: skip
    asha: AshaConfig = Field(default_factory=AshaConfig, description="ASHA's settings (tune.scheduler: asha)")
    reuse_actors: bool = Field(
        True,
        description="run later trials in the worker process of an earlier one (torch and the harness imported once "
        "per worker, not per trial; per-trial seeds, threads and peak memory are reset); false = a fresh process "
        "per trial. Distributed-engine trials always get fresh workers",
    )


@dataclass(frozen=True)
class Domain:
    """One search axis: ``kind`` in grid/choice (``values``) or uniform/loguniform/randint (``bounds``).

    ``randint`` draws integers ``a <= x < b`` (Ray Tune's convention).
    """

    kind: str
    values: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None

    def probe_values(self) -> list[Any]:
        """Values validated before the sweep starts: every listed value, or both ends of a range."""
        if self.values is not None:
            return list(self.values)
        low, high = self.bounds
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def to_dict(self) -> dict[str, list]:
        """``{"grid": [...]}`` as written in YAML."""
        return {self.kind: list(self.values if self.values is not None else self.bounds)}


def parse_domain(key: str, spec: Any) -> tuple[Domain | None, Errors]:
    """A search axis as written in YAML (``{grid: [0, 1]}``) -> :class:`Domain`, or the errors."""
    where = f"search.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        return None, [(where, f"must be a mapping with exactly one of {', '.join(KINDS)}, e.g. {{grid: [1, 2]}}; "
                              f"got {shown(spec)}")]  # fmt: skip
    ((kind, arg),) = spec.items()
    if kind not in KINDS:
        return None, [(f"{where}.{kind}", unknown_key_msg(str(kind), list(KINDS)).replace("key", "domain kind"))]
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            return None, [(f"{where}.{kind}", f"must be a non-empty list of values, got {shown(arg)}")]
        return Domain(kind, values=tuple(as_number(x) for x in arg)), []
    arg = [as_number(x) for x in arg] if isinstance(arg, list) else arg
    numeric = isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) for x in arg)
    if kind == "randint" and numeric and not all(isinstance(x, int) for x in arg):
        numeric = False
    if not numeric or not arg[0] < arg[1] or (kind == "loguniform" and arg[0] <= 0):
        need = {"uniform": "numbers a < b", "loguniform": "numbers 0 < a < b", "randint": "integers a < b (b excluded)"}
        return None, [(f"{where}.{kind}", f"must be [a, b] with {need[kind]}, got {shown(arg)}")]
    return Domain(kind, bounds=(arg[0], arg[1])), []


def expand_variant(variant: dict[str, Any]) -> list[dict[str, Any]]:
    """``{a: [1, 2], b: x}`` -> ``[{a: 1, b: x}, {a: 2, b: x}]`` (a list is a grid; wrap a list value: [[1, 2]])."""
    keys = list(variant)
    grids = [v if isinstance(v, list) else [v] for v in variant.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*grids)]


@dataclass
class SweepSpec:
    """A validated sweep.

    Attributes:
        name: sweep name = MLflow experiment.
        base: the merged run dict (YAML spelling) without ``search``/``tune``; trials apply assignments to it.
        axes: dotted key -> :class:`Domain`, in file order.
        variants: expanded variants, each a flat dotted-key dict; ``[{}]`` when there are none.
        tune: Ray Tune settings.
        source_hash: sha256 of the merged YAML (includes and ``--set`` overrides applied).
    """

    name: str
    base: dict[str, Any]
    axes: dict[str, Domain]
    variants: list[dict[str, Any]]
    tune: TuneConfig
    source_hash: str
    source: str = ""  # the sweep file's text, as written
    resolved: str = ""  # the merged YAML the hash covers (includes and --set applied)
    origins: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def grid_axes(self) -> dict[str, Domain]:
        return {k: d for k, d in self.axes.items() if d.kind == "grid"}

    @property
    def num_trials(self) -> int:
        """Variants x values of every grid axis x ``tune.num_samples``, as Ray Tune will run them."""
        points = math.prod(len(d.values) for d in self.grid_axes.values())
        return len(self.variants) * points * self.tune.num_samples

    def run_dict(self, assignment: dict[str, Any]) -> dict[str, Any]:
        """The base with flat dotted ``assignment`` (axis values, a variant) applied; not yet validated."""
        d = copy.deepcopy(self.base)
        for key, value in assignment.items():
            set_dotted(d, key, value)
        return d

    def resolve(self, assignment: dict[str, Any]) -> RunSpec:
        """The validated :class:`RunSpec` of one trial. Raises :class:`ConfigError`."""
        return resolve_run(self.run_dict(assignment), self.origins)

    def trial_dicts(self) -> list[dict[str, Any]]:
        """Every trial's resolved run dict (grid-only sweeps), ``num_samples`` times over, in Ray Tune's order.

        Raises:
            ValueError: the sweep has choice or random axes, whose values are only drawn by Ray Tune.
        """
        drawn = [k for k, d in self.axes.items() if d.kind != "grid"]
        if drawn:
            raise ValueError(f"trial_dicts() needs a grid-only sweep; axes {', '.join(drawn)} are drawn at random")
        keys = list(self.grid_axes)
        points = list(itertools.product(*(self.axes[k].values for k in keys)))
        out = []
        for _ in range(self.tune.num_samples):
            for variant in self.variants:
                for point in points:
                    out.append(self.resolve({**dict(zip(keys, point)), **variant}).to_dict())
        return out


def _probe_assignments(axes: dict[str, Domain], variants: list[dict]) -> list[tuple[dict, dict]]:
    """(assignment, origins) pairs that together try each variant with each probe value of each axis."""
    first = {k: d.probe_values()[0] for k, d in axes.items()}
    out, seen = [], set()
    for variant, var_origins in variants:
        options = [(None, None)] + [(k, v) for k, d in axes.items() for v in d.probe_values()[1:]]
        for key, value in options:
            assignment = {**first, **({key: value} if key else {}), **variant}
            marker = repr(sorted(assignment.items(), key=lambda kv: kv[0]))
            if marker in seen:
                continue
            seen.add(marker)
            origins = {k: f"search.{k} ({axes[k].kind} value {shown(v)})" for k, v in assignment.items() if k in axes}
            out.append((assignment, {**origins, **var_origins}))
    return out


def _scheduler_errors(tune: TuneConfig, tune_raw: dict, raw: dict) -> Errors:
    """``tune.asha`` only with ``tune.scheduler: asha``, whose metric must be reported every epoch (``val/*``)."""
    if tune.scheduler != "asha":
        return [("tune.asha", "only used with tune.scheduler: asha")] if "asha" in tune_raw else []
    errors: Errors = []
    if not tune.metric.startswith(("val/", "train/")):
        errors.append(("tune.metric", f"{tune.metric!r}: ASHA compares trials every epoch, so it needs a per-epoch "
                                      "metric (val/top1, val/map, train/loss, ...)"))  # fmt: skip
    epochs = (raw.get("train") or {}).get("epochs") if isinstance(raw.get("train"), dict) else None
    if isinstance(epochs, int) and tune.asha.grace_period >= epochs:
        errors.append(("tune.asha.grace_period", f"must be < train.epochs ({epochs}), or ASHA never stops a trial "
                                                 f"(got {tune.asha.grace_period})"))  # fmt: skip
    return errors


def _search_sections(raw: dict, errors: Errors) -> tuple[dict, list, dict]:
    """``search:`` (without its variants), ``search.variants`` and ``tune:`` of a merged sweep dict (popped)."""
    search = raw.pop("search", None) or {}
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(search, dict):
        errors.append(("search", f"must be a mapping of dotted keys to domains, got {shown(search)}"))
        search = {}
    variants = search.pop("variants", None) or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        msg = f"must be a list of mappings (dotted key -> value or list of values), got {shown(variants)}"
        errors.append(("search.variants", msg))
        variants = []
    if not isinstance(tune_raw, dict):
        errors.append(("tune", f"must be a mapping, got {shown(tune_raw)}"))
        tune_raw = {}
    return search, variants, tune_raw


def _grid_values(value: Any) -> list | None:
    """The values of ``--set KEY=[1,4]`` or ``--set KEY=1,4`` on a searched key; None for a single value."""
    if isinstance(value, list):
        return [as_number(v) for v in value]
    if isinstance(value, str) and "," in value:
        return [as_number(yaml.safe_load(v.strip())) for v in value.split(",")]
    return None


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _drop_overridden(search: dict, variants: list[dict], parsed: list[tuple[str, Any, str]], errors: Errors) -> list:
    """An override of a searched key replaces that axis (in ``search`` and in every variant), in place; a list or
    comma value (``--set method.bottleneck_tokens=[1,4]``) makes it a grid of those values instead. Returns the
    overrides left to apply to the base run."""
    rest = []
    for key, value, label in parsed:
        if key.split(".")[0] == "search":
            errors.append((label, "search axes cannot be set with --set; set the key itself, e.g. --set train.lr=1e-3"))
        grid = _grid_values(value)
        narrowed = False
        if key in search and grid is not None:
            search[key], narrowed = {"grid": grid}, True
        for searched in [k for k in search if k == key or k.startswith(key + ".")] if not narrowed else []:
            del search[searched]
        # A variant that sets the key keeps only the given values; one that sets none of them goes (so --set
        # method.name=late keeps the variant of late, not late with another method's options).
        keep = grid if grid is not None else [value]
        matches = [v for v in variants if key in v and any(x in keep for x in _listed(v[key]))]
        for v in [v for v in variants if key in v]:
            listed = _listed(v[key])
            if matches and v not in matches:
                variants.remove(v)
            elif grid is not None:
                v[key], narrowed = [x for x in listed if x in keep] or grid, True
            else:
                del v[key]
        for holder in variants:
            for searched in [k for k in holder if k.startswith(key + ".")]:
                del holder[searched]
        if not narrowed:
            rest.append((key, value, label))
    return rest


def _axes(search: dict, errors: Errors) -> dict[str, Domain]:
    """The search axes, parsed; the keys that cannot be searched are errors."""
    axes: dict[str, Domain] = {}
    for key, spec in search.items():
        if key.split(".")[0] in ("name", "include", "search", "tune"):
            errors.append((f"search.{key}", "cannot be searched"))
            continue
        domain, errs = parse_domain(key, spec)
        errors += errs
        if domain is not None:
            axes[key] = domain
    return axes


def _variants(raw_variants: list[dict], axes: dict[str, Domain], errors: Errors) -> list[tuple[dict, dict]]:
    """Every variant expanded to flat assignments, each with the origins of its values; ``[({}, {})]`` for none."""
    variants: list[tuple[dict, dict]] = []
    for i, v in enumerate(raw_variants):
        for key, value in v.items():
            if key in axes:
                msg = f"is also a search axis (search.{key}); set it in one place"
                errors.append((f"search.variants[{i}].{key}", msg))
            if value == []:  # a grid of nothing would make the variant no trial at all
                errors.append((f"search.variants[{i}].{key}", "is an empty list: give one value or a list of values "
                                                             "(to set a list, wrap it: [[]])"))  # fmt: skip
        for flat in expand_variant({k: val for k, val in v.items() if k not in axes}):
            if flat not in [f for f, _ in variants]:
                origins = {k: f"search.variants[{i}].{k} (value {shown(val)})" for k, val in flat.items()}
                variants.append((flat, origins))
    return variants or [({}, {})]


def _probe_errors(raw: dict, axes: dict[str, Domain], variants: list[tuple[dict, dict]], origins: dict) -> Errors:
    """Every variant with each probe value of each axis, validated against the base run."""
    errors: Errors = []
    for assignment, probe_origins in _probe_assignments(axes, variants):
        d = {"name": "", **copy.deepcopy(raw)}  # a missing name is reported once, by build_sweep
        try:
            for key, value in assignment.items():
                set_dotted(d, key, value)
        except ValueError as e:
            errors.append((probe_origins.get(key, key), str(e)))
            continue
        _, run_errors = _resolve(d)
        errors += label_errors(run_errors, {**origins, **probe_origins})
    return errors


SEED_DRAWN = Domain("randint", bounds=(0, 2**31 - 1))  # the seed axis added when samples are the replicates


def _replicate_errors(tune: TuneConfig, axes: dict[str, Domain], variants: list[tuple[dict, dict]],
                      raw: dict) -> Errors:  # fmt: skip
    """Seeds are the only replicate axis. ``tune.num_samples`` > 1 repeats each grid point: on a grid-only sweep that
    is the same trial with the same seed run again (a report would count it as n more seeds), so it is refused; with
    drawn axes and no seed axis, each sample draws its seed too (``axes["seed"]`` is added, in place)."""
    if tune.num_samples == 1:
        return []
    seeded = "seed" in axes or any("seed" in v for v, _ in variants)
    if all(d.kind == "grid" for d in axes.values()):
        points = len(variants) * math.prod(len(d.values) for d in axes.values())
        seeds = "" if seeded else f", all with seed {raw.get('seed', 0)}"
        return [("tune.num_samples", f"{tune.num_samples} on a grid-only sweep runs each of its {points} distinct "
                 f"trials {tune.num_samples} times{seeds}: identical runs, not replicates. Seeds are the replicates: "
                 "set tune.num_samples: 1 and give more seeds (search: {seed: {grid: [0, 1, 2]}}, or "
                 "--set seed=[0,1,2] where seed is searched)")]  # fmt: skip
    if not seeded:
        axes["seed"] = SEED_DRAWN
    return []


def build_sweep(raw: dict, parsed: list[tuple[str, Any, str]], errors: Errors, path: Path) -> SweepSpec:
    """Validate a merged sweep dict with its parsed ``--set`` overrides (see :func:`harness.config.load_config`)."""
    raw = copy.deepcopy(raw)
    search, raw_variants, tune_raw = _search_sections(raw, errors)
    parsed = _drop_overridden(search, raw_variants, parsed, errors)
    origins: dict[str, str] = {}
    sweep_dict = {**raw, "tune": tune_raw}
    errors += apply_overrides(sweep_dict, [p for p in parsed if p[0].split(".")[0] != "search"], origins)
    tune_raw = sweep_dict.pop("tune")
    raw = sweep_dict
    tune = validate(TuneConfig, tune_raw, "tune", errors)
    if tune is not None:
        errors += _scheduler_errors(tune, tune_raw, raw)
    if not isinstance(raw.get("name"), str) or not raw.get("name"):
        errors.append(("name", "required for sweeps: it names the MLflow experiment, e.g. name: fusion_layer"))
    axes = _axes(search, errors)
    variants = _variants(raw_variants, axes, errors)
    if tune is not None:
        errors += _replicate_errors(tune, axes, variants, raw)
    errors += _probe_errors(raw, axes, variants, origins)
    if errors:
        raise ConfigError(errors)
    searched = {**{k: d.to_dict() for k, d in axes.items()}, "variants": raw_variants}
    merged = {**raw, "search": searched, "tune": tune_raw}
    source_hash = hashlib.sha256(yaml.safe_dump(merged, sort_keys=True).encode()).hexdigest()
    source = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    resolved = yaml.safe_dump(merged, sort_keys=False)
    return SweepSpec(raw["name"], raw, axes, [v for v, _ in variants], tune, source_hash, source, resolved, origins)
