"""A sweep as Ray Tune sees it: the ``param_space``, each trial's assignment, its label, the first trial.

One flat key per search axis, the variants as one grid axis (``__variant__``), the base run (``__base__``, JSON) and
the experiment's storage path (``__storage__``) as constants; ``trial_assignment`` turns a trial's config back into
the dotted assignment that ``SweepSpec.run_dict`` applies.
"""

from __future__ import annotations

import itertools
import json

from harness.config import RunSpec, SweepSpec


def trial_assignment(config: dict) -> dict:
    """The flat dotted assignment of one Tune trial: its sampled axes plus its variant."""
    return {**{k: v for k, v in config.items() if not k.startswith("__")}, **config.get("__variant__", {})}


def param_space(spec: SweepSpec, base: dict, storage: str | None = None) -> dict:
    """Ray Tune's search space: one flat key per axis, the variants as one grid axis, the base (and the
    experiment's storage path) as constants."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice}
    space: dict = {"__base__": json.dumps(base), "__storage__": storage}
    for key, d in spec.axes.items():
        space[key] = make[d.kind](list(d.values)) if d.values is not None else getattr(tune, d.kind)(*d.bounds)
    space["__variant__"] = tune.grid_search(spec.variants) if len(spec.variants) > 1 else spec.variants[0]
    return space


def first_values(spec: SweepSpec) -> dict:
    """Each axis at its first value: with a variant, the assignment that stands for a sweep's whole setup."""
    return {k: d.probe_values()[0] for k, d in spec.axes.items()}


def first_trial(spec: SweepSpec) -> RunSpec:
    """The resolved first trial: where the sweep's data lives, which engine it runs."""
    return spec.resolve(first_values(spec) | spec.variants[0])


def swept_keys(spec: SweepSpec) -> list[str]:
    """Every key a variant or an axis sets, in file order (the first variant's first): what tells trials apart."""
    return list(dict.fromkeys([*(k for v in spec.variants for k in v), *spec.axes]))


def describe(config: dict, spec: SweepSpec) -> str:
    """Short trial label from its swept values: ``method.name=mbt method.fusion_layer=1 seed=0``."""
    a = trial_assignment(config)
    return " ".join(f"{k}={a[k]}" for k in swept_keys(spec) if k in a) or "trial"


# How a run name spells a swept key (the papers' symbols); other keys by their last part: `lr0.001`.
SHORT = {"method.fusion_layer": "Lf", "method.bottleneck_tokens": "Nb", "seed": "s", "train.lr": "lr",
         "backbone.name": "", "method.name": ""}  # fmt: skip


def varying_keys(spec: SweepSpec) -> list[str]:
    """The swept keys that take more than one value over the sweep's trials (a drawn axis always does)."""
    out = []
    for key in swept_keys(spec):
        d = spec.axes.get(key)
        values = {repr(v[key]) for v in spec.variants if key in v} | ({repr(x) for x in d.values} if d and d.values
                                                                       else set())  # fmt: skip
        if (d is not None and d.values is None) or len(values) > 1:
            out.append(key)
    return out


def run_name(config: dict, spec: SweepSpec) -> str:
    """A child run's name from what varies between the sweep's trials, the method first and the seed last:
    ``mbt-Lf2-Nb4-s0`` (``SHORT`` spellings; other keys as ``readout=gap``)."""
    a = {"method.name": (spec.base.get("method") or {}).get("name"), **trial_assignment(config)}
    keys = [k for k in varying_keys(spec) if k in a and k not in ("method.name", "seed")]

    def part(k: str) -> str:
        v = f"{a[k]:.3g}" if isinstance(a[k], float) else str(a[k])
        return f"{SHORT[k]}{v}" if k in SHORT else f"{k.rsplit('.', 1)[-1]}={v}"

    head = [str(a["method.name"])] if a["method.name"] else []
    tail = [f"s{a['seed']}"] if "seed" in a else []
    return "-".join([*head, *map(part, keys), *tail]) or spec.name


def run_label(run, spec: SweepSpec) -> str:
    """:func:`describe` of a child run, from its params."""
    p = run.data.params
    return " ".join(f"{k}={p[k]}" for k in swept_keys(spec) if k in p) or run.info.run_id


def scheduler_tags(spec: SweepSpec) -> dict[str, str]:
    """``harness.scheduler``, and ``harness.budget_matched``: false when ASHA stops trials early (reports mark it)."""
    matched = spec.tune.scheduler == "fifo"
    return {"harness.scheduler": spec.tune.scheduler, "harness.budget_matched": str(matched).lower()}


def dry_run(path: str, overrides: list[str]) -> int:
    """``harness sweep FILE --dry-run``: every trial as its run name and swept values, one line each; nothing runs.
    Drawn axes (choice, uniform, ...) are shown as their domains: Ray Tune draws them."""
    from harness.config import ConfigError, load_config

    spec = load_config(path, overrides)
    if not isinstance(spec, SweepSpec):
        raise ConfigError([("search", f"{path} has no search: or tune: section; run it with `harness run {path}`")])
    grid = {k: d for k, d in spec.axes.items() if d.kind == "grid"}
    drawn = {k: d for k, d in spec.axes.items() if d.kind != "grid"}
    points = [dict(zip(grid, combo)) for combo in itertools.product(*(d.values for d in grid.values()))]
    n = 0
    for _ in range(spec.tune.num_samples):
        for variant in spec.variants:
            for point in points:
                n += 1
                config = {**point, "__variant__": variant}
                extra = " ".join(f"{k}~{d.kind}{list(d.values or d.bounds)}" for k, d in drawn.items())
                print(f"{n:>4}  {run_name(config, spec):<28} {describe(config, spec)} {extra}".rstrip())
    print(f"{spec.num_trials} trials ({spec.tune.num_samples} sample(s) x {len(spec.variants)} variant(s) x "
          f"{len(points)} grid point(s)); nothing was run", flush=True)  # fmt: skip
    return 0
