"""A sweep as Ray Tune sees it: the ``param_space``, each trial's assignment, its label, the first trial.

One flat key per search axis, the variants as one grid axis (``__variant__``), the base run (``__base__``, JSON) and
the experiment's storage path (``__storage__``) as constants; ``trial_assignment`` turns a trial's config back into
the dotted assignment that ``SweepSpec.run_dict`` applies.
"""

from __future__ import annotations

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


def run_label(run, spec: SweepSpec) -> str:
    """:func:`describe` of a child run, from its params."""
    p = run.data.params
    return " ".join(f"{k}={p[k]}" for k in swept_keys(spec) if k in p) or run.info.run_id


def scheduler_tags(spec: SweepSpec) -> dict[str, str]:
    """``harness.scheduler``, and ``harness.budget_matched``: false when ASHA stops trials early (reports mark it)."""
    matched = spec.tune.scheduler == "fifo"
    return {"harness.scheduler": spec.tune.scheduler, "harness.budget_matched": str(matched).lower()}
