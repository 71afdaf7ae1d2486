"""Statistics of a report: seeds are the replicates; a row is mean, 95% t-interval and n over its seeds.

``aggregate`` groups runs by the report's keys; ``paired_differences`` compares the best row with every other row
seed by seed (the paired t-interval of the difference). Both are in the task's own primary metric, which every run
carries as its ``harness.primary_metric`` tag (``test/map`` for multilabel, ``test/seg_acc`` for localisation,
``test/action_top1`` for EPIC's multihead, ``test/top1`` for classification and runs without the tag):
``primary_metric`` reads it, ``metric_columns`` names the columns, and the aggregated table keeps it in
``table.attrs["primary"]`` for the renderers and figures.
"""

from __future__ import annotations

import math

import pandas as pd

DEFAULT_PRIMARY = "test/top1"  # runs logged before the tag existed were all top-1 classification
PRIMARY_TAG = "tags.harness.primary_metric"
# Metric name -> how a column header spells it.
LABELS = {"top1": "top-1", "top5": "top-5", "map": "mAP", "auc": "AUC", "seg_acc": "segment acc.",
          "action_top1": "action top-1", "verb_top1": "verb top-1", "noun_top1": "noun top-1"}  # fmt: skip


def metric_label(metric: str) -> str:
    """``test/map`` -> ``mAP``; a metric without a label is shown by its name."""
    name = metric.removeprefix("metrics.").removeprefix("test/")
    return LABELS.get(name, name)


def metric_columns(primary: str = DEFAULT_PRIMARY) -> dict[str, str]:
    """Report column -> MLflow metric of the primary metric with both modalities and with one masked, in order."""
    label = metric_label(primary)
    return {f"test {label}": f"metrics.{primary}", f"{label} audio only": f"metrics.{primary}:audio_only",
            f"{label} video only": f"metrics.{primary}:video_only"}  # fmt: skip


METRICS = metric_columns()  # the top-1 columns (classification)


def primary_metric(runs: pd.DataFrame) -> str:
    """The primary metric the runs' tasks declare (``harness.primary_metric``); ``test/top1`` if no run has the tag.

    Raises:
        LookupError: the runs come from tasks with different primary metrics (a row would mix mAP and top-1).
    """
    values = sorted(runs[PRIMARY_TAG].dropna().unique()) if PRIMARY_TAG in runs.columns else []
    if len(values) > 1:
        raise LookupError(f"the runs of this report have different primary metrics ({', '.join(values)}): "
                          "report one task at a time (filters: {tags.harness.primary_metric: ...})")  # fmt: skip
    return values[0] if values else DEFAULT_PRIMARY


def table_columns(table: pd.DataFrame) -> dict[str, str]:
    """:func:`metric_columns` of the primary metric an aggregated table was made for."""
    return metric_columns(table.attrs.get("primary", DEFAULT_PRIMARY))


def t_interval(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean; NaN for fewer than two values."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(runs: pd.DataFrame, keys: list[str], extra: dict[str, str] | None = None,
              primary: str = DEFAULT_PRIMARY) -> pd.DataFrame:  # fmt: skip
    """One row per group of ``keys``: cost (mean over seeds) and metrics as mean, CI half-width and n, sorted by the
    ``primary`` metric (best first; kept in ``attrs["primary"]``).

    ``extra`` maps more columns to MLflow metric columns (``{"val/top1": "metrics.val/top1"}``), aggregated alike.
    """
    columns = metric_columns(primary)
    df = runs.copy()
    for k in keys:
        df[f"params.{k}"] = df[f"params.{k}"].fillna("—")
    rows, repeated = [], 0
    for group, g in df.groupby([f"params.{k}" for k in keys], sort=False, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        if "method.fusion_layer" not in keys:  # shown even when not swept: it says what kind of fusion a row is
            layers = g.get("params.method.fusion_layer", pd.Series(dtype=object)).dropna().unique()
            row["method.fusion_layer"] = layers[0] if len(layers) == 1 else "—"
        seeds = g["params.seed"].astype(str) if "params.seed" in g else pd.Series(range(len(g)), index=g.index)
        row["n"] = seeds.nunique()  # seeds are the replicates: runs of one seed are one value (their mean)
        repeated += len(g) - row["n"]
        for col, metric in (("trainable params", "params_trainable"), ("total params", "params_total"),
                            ("GFLOPs", "gflops")):  # fmt: skip
            row[col] = g.get(f"metrics.model/{metric}", pd.Series(dtype=float)).mean()
        for col, metric in {**columns, **(extra or {})}.items():
            values = g.get(metric, pd.Series(float("nan"), index=g.index)).groupby(seeds).mean()
            row[col], row[f"{col} ci95"] = values.mean(), t_interval(values)
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.sort_values(next(iter(columns)), ascending=False, kind="stable").reset_index(drop=True)
    out.attrs["primary"] = primary
    out.attrs["repeated_seeds"] = repeated  # runs that repeated a seed of their row (averaged into it)
    return out


INDISTINGUISHABLE = ("≈: the paired 95% t-interval of the difference (over the seeds both rows ran) includes 0, "
                     "so the two rows are not distinguishable at this number of seeds; the one rule every part of "
                     "the report uses")  # fmt: skip


def paired_interval(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its paired 95% t-interval (low, high): ``scipy.stats.ttest_rel(a, b)``."""
    from scipy import stats

    mean = float((a - b).mean())
    if (a - b).std(ddof=1) == 0:  # the same difference at every seed: scipy's interval is NaN, the spread is 0
        return mean, mean, mean
    low, high = stats.ttest_rel(a.to_numpy(), b.to_numpy()).confidence_interval(0.95)
    return mean, float(low), float(high)


def row_labels(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each run's row as text: its values of ``keys`` joined by ", " (missing: "—"; an empty provenance: left out)."""
    parts = [runs[f"params.{k}"].fillna("—").astype(str) for k in keys]
    label = parts[0].str.cat(parts[1:], sep=", ") if len(parts) > 1 else parts[0]
    return label.str.removesuffix(", ") if keys[-1] == "provenance" else label


def paired_differences(runs: pd.DataFrame, keys: list[str], metric: str = f"metrics.{DEFAULT_PRIMARY}") -> pd.DataFrame:
    """The best row (highest mean ``metric``, the primary one's MLflow column) minus each other row over the seeds
    both have.

    One line per other row with at least two shared seeds: ``row``, ``mean`` and ``ci95`` (half-width) of the paired
    difference, its interval ``low``/``high`` (:func:`paired_interval`), ``n`` shared seeds, and
    ``indistinguishable`` (the interval includes 0: :data:`INDISTINGUISHABLE`). Empty when no pair qualifies.
    """
    cols = ["row", "mean", "ci95", "low", "high", "n", "indistinguishable"]
    if metric not in runs.columns or "params.seed" not in runs.columns or runs.empty:
        return pd.DataFrame(columns=cols)
    df = runs.assign(_row=row_labels(runs, keys), _seed=runs["params.seed"].astype(str))
    by_seed = df.groupby(["_row", "_seed"], sort=False)[metric].mean()  # a repeated seed is one value
    means = by_seed.groupby(level="_row", sort=False).mean().sort_values(ascending=False, kind="stable")
    best = means.index[0]
    out = []
    for row in means.index[1:]:
        a, b = by_seed[best].align(by_seed[row], join="inner")
        if len(a) < 2:
            continue
        mean, low, high = paired_interval(a, b)
        out.append({"row": row, "mean": mean, "ci95": (high - low) / 2, "low": low, "high": high, "n": len(a),
                    "indistinguishable": bool(low <= 0 <= high)})  # fmt: skip
    return pd.DataFrame(out, columns=cols).assign(best=best, metric=metric_label(metric))
