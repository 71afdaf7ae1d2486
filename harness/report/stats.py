"""Statistics of a report: seeds are the replicates; a row is mean, 95% t-interval and n over its seeds.

``aggregate`` groups runs by the report's keys; ``paired_differences`` compares the best row with every other row
seed by seed (the paired t-interval of the difference).
"""

from __future__ import annotations

import math

import pandas as pd

# Report column -> MLflow metric; the order of the accuracy columns in every format.
METRICS = {
    "test top-1": "metrics.test/top1",
    "top-1 audio only": "metrics.test/top1:audio_only",
    "top-1 video only": "metrics.test/top1:video_only",
}


def t_interval(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean; NaN for fewer than two values."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(runs: pd.DataFrame, keys: list[str], extra: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per group of ``keys``: cost (mean over seeds) and metrics as mean, CI half-width and n.

    ``extra`` maps more columns to MLflow metric columns (``{"val/top1": "metrics.val/top1"}``), aggregated alike.
    """
    df = runs.copy()
    for k in keys:
        df[f"params.{k}"] = df[f"params.{k}"].fillna("—")
    rows = []
    for group, g in df.groupby([f"params.{k}" for k in keys], sort=False, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        if "method.fusion_layer" not in keys:  # shown even when not swept: it says what kind of fusion a row is
            layers = g.get("params.method.fusion_layer", pd.Series(dtype=object)).dropna().unique()
            row["method.fusion_layer"] = layers[0] if len(layers) == 1 else "—"
        row["n"] = len(g)
        for col, metric in (("trainable params", "params_trainable"), ("total params", "params_total"),
                            ("GFLOPs", "gflops")):  # fmt: skip
            row[col] = g.get(f"metrics.model/{metric}", pd.Series(dtype=float)).mean()
        for col, metric in {**METRICS, **(extra or {})}.items():
            values = g.get(metric, pd.Series(dtype=float))
            row[col], row[f"{col} ci95"] = values.mean(), t_interval(values)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("test top-1", ascending=False, kind="stable").reset_index(drop=True)


def row_labels(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each run's row as text: its values of ``keys`` joined by ", " (missing: "—"; an empty provenance: left out)."""
    parts = [runs[f"params.{k}"].fillna("—").astype(str) for k in keys]
    label = parts[0].str.cat(parts[1:], sep=", ") if len(parts) > 1 else parts[0]
    return label.str.removesuffix(", ") if keys[-1] == "provenance" else label


def paired_differences(runs: pd.DataFrame, keys: list[str], metric: str = "metrics.test/top1") -> pd.DataFrame:
    """The best row (highest mean ``metric``) minus each other row over the seeds both have.

    One line per other row with at least two shared seeds: ``row``, ``mean`` and ``ci95`` of the paired difference,
    ``n`` shared seeds, and ``overlap`` (the two rows' own 95% CIs overlap). Empty when no pair qualifies.
    """
    cols = ["row", "mean", "ci95", "n", "overlap"]
    if metric not in runs.columns or "params.seed" not in runs.columns or runs.empty:
        return pd.DataFrame(columns=cols)
    df = runs.assign(_row=row_labels(runs, keys), _seed=runs["params.seed"].astype(str))
    stats = df.groupby("_row", sort=False)[metric].agg(["mean", t_interval]).sort_values("mean", ascending=False)
    best = stats.index[0]
    by_seed = df.groupby(["_row", "_seed"])[metric].mean()
    out = []
    for row in stats.index[1:]:
        diff = (by_seed[best] - by_seed[row]).dropna()
        if len(diff) < 2:
            continue
        gap = abs(stats.loc[best, "mean"] - stats.loc[row, "mean"])
        overlap = bool(gap <= stats.loc[best, "t_interval"] + stats.loc[row, "t_interval"])
        out.append({"row": row, "mean": diff.mean(), "ci95": t_interval(diff), "n": len(diff), "overlap": overlap})
    return pd.DataFrame(out, columns=cols).assign(best=best)
