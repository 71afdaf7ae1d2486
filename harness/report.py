"""``harness report``: the comparison table and figure of a sweep, built from MLflow alone.

Reads the FINISHED child runs of the latest sweep (or ``--sweep NAME``), groups them by method and the swept keys,
aggregates the seeds as mean ± 95% t-interval with n, and writes Markdown, a CSV beside it (raw aggregates), and a
PNG figure of top-1 against the fusion layer. The report is also logged as an artifact of the sweep's parent run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

# Params that never define a row: they differ between seeds or only say where things were stored.
_NOT_A_KEY = {"seed", "name", "cache_dir", "tracking.uri", "tracking.experiment", "train.threads"}
_METRICS = {
    "test top-1": "metrics.test/top1",
    "top-1 audio only": "metrics.test/top1:audio_only",
    "top-1 video only": "metrics.test/top1:video_only",
}


def find_sweep(client, sweep: str | None):
    """The parent run of the latest invocation of ``sweep`` (or of any sweep); raises ``LookupError``."""
    exps = client.search_experiments()
    filt = "tags.`harness.sweep` = '{}'".format(sweep.replace("'", "\\'")) if sweep else "tags.`harness.sweep` != ''"
    found = client.search_runs([e.experiment_id for e in exps], filt, order_by=["attributes.start_time DESC"])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        names = sorted({e.name for e in exps if e.name != "Default"})
        what = f"no sweep named '{sweep}'" if sweep else "no sweep"
        raise LookupError(f"{what} in this MLflow store; experiments here: {', '.join(names) or 'none'}. "
                          "Run `harness sweep FILE` first, or pass --tracking-uri / --sweep.")  # fmt: skip
    return parents[0]


def child_runs(uri: str, parent) -> pd.DataFrame:
    """FINISHED child runs of ``parent`` as MLflow's pandas frame (``params.*``, ``metrics.*``, ``tags.*``)."""
    import mlflow

    mlflow.set_tracking_uri(uri)  # search_runs reads the process-wide URI

    return mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        output_format="pandas",
    )


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """Params (dotted, without ``params.``) whose set values differ between runs: the rows' keys.

    ``method.name`` comes first. A param that only some methods have (``method.bottleneck_tokens``) is a key only if
    the runs that have it disagree on it; seeds and storage locations never are.
    """
    keys = [c[len("params.") :] for c in runs.columns if c.startswith("params.")]
    varying = [k for k in keys if k not in _NOT_A_KEY and runs[f"params.{k}"].dropna().nunique() > 1]
    return ["method.name"] + [k for k in varying if k != "method.name"]


def t_interval(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean; NaN for fewer than two values."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group of ``keys``: cost (mean over seeds) and metrics as mean, CI half-width and n."""
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
        for col, metric in _METRICS.items():
            values = g.get(metric, pd.Series(dtype=float))
            row[col], row[f"{col} ci95"] = values.mean(), t_interval(values)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("test top-1", ascending=False, kind="stable").reset_index(drop=True)


def _pm(mean: float, ci: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.1f}" if pd.isna(ci) else f"{mean:.1f} ± {ci:.1f}"


def to_markdown(table: pd.DataFrame, keys: list[str], title: str, note: str) -> str:
    """The table as GitHub Markdown, with the n of each row and what the ± means."""
    show = pd.DataFrame({"method": table["method.name"], "fusion layer": table["method.fusion_layer"]})
    for k in keys[1:]:
        if k != "method.fusion_layer":
            show[k] = table[k]
    show["trainable params"] = table["trainable params"].map(lambda v: f"{v / 1e6:.3f} M")
    show["total params"] = table["total params"].map(lambda v: f"{v / 1e6:.3f} M")
    show["GFLOPs"] = table["GFLOPs"].map(lambda v: f"{v:.4f}")
    for col in _METRICS:
        show[col] = [_pm(m, c) for m, c in zip(table[col], table[f"{col} ci95"])]
    show["n"] = table["n"]
    return f"# {title}\n\n{note}\n\n{show.to_markdown(index=False)}\n"


def figure(table: pd.DataFrame, keys: list[str], path: Path, title: str) -> None:
    """Top-1 (mean ± 95% CI) against the fusion layer per method; methods without one as horizontal bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    palette = dict(zip(table["method.name"].unique(), sns.color_palette("tab10")))
    layered = table[table["method.fusion_layer"] != "—"]
    methods = list(layered["method.name"].unique())
    for i, (method, g) in enumerate(layered.groupby("method.name", sort=False)):
        dodge = 0.06 * (i - (len(methods) - 1) / 2)  # methods at the same Lf side by side
        g = g.assign(lf=g["method.fusion_layer"].astype(int) + dodge).sort_values("lf")
        ax.errorbar(g["lf"], g["test top-1"], yerr=g["test top-1 ci95"].fillna(0), marker="o", capsize=3,
                    label=method, color=palette[method])  # fmt: skip
    flat = table.drop(layered.index)
    for _, r in flat.iterrows():
        c, m, ci = palette[r["method.name"]], r["test top-1"], r["test top-1 ci95"]
        ax.axhline(m, ls="--", color=c, label=r["method.name"])
        if not pd.isna(ci):
            ax.axhspan(m - ci, m + ci, color=c, alpha=0.12)
    ax.set_xlabel("fusion layer Lf (0 = early, L = late)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    if not layered.empty:
        ax.set_xticks(sorted(layered["method.fusion_layer"].astype(int).unique()))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(uri: str, sweep: str | None, out: Path, fmt: str | None = None) -> dict[str, Path]:
    """Write the report files of ``sweep`` (latest sweep if None); returns ``{"md"|"csv"|"png": path}``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = find_sweep(client, sweep)
    name = parent.data.tags["harness.sweep"]
    runs = child_runs(uri, parent)
    if runs.empty:
        raise LookupError(f"sweep '{name}' (parent run {parent.info.run_id}) has no FINISHED trials to report")
    keys = swept_keys(runs)
    table = aggregate(runs, keys)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or out.suffix.lstrip(".") or "md"
    paths: dict[str, Path] = {}
    note = (f"Sweep `{name}` (parent run `{parent.info.run_id}`, sweep hash "
            f"`{parent.data.tags.get('harness.sweep_hash', '?')[:12]}`): {len(runs)} finished trials. Accuracies are "
            "mean ± 95% t-interval over seeds (n per row); GFLOPs = 2 × multiply-adds of one clip's forward pass; "
            "\"audio only\" masks the video at test time and vice versa.")  # fmt: skip
    csv = out.with_suffix(".csv")
    table.to_csv(csv, index=False)
    paths["csv"] = csv
    if fmt == "md":
        png = out.with_suffix(".png")
        figure(table, keys, png, f"{name}: test top-1 vs fusion layer")
        out.write_text(to_markdown(table, keys, f"{name}: method comparison", note) + f"\n![top-1]({png.name})\n")
        paths.update(md=out, png=png)
    for p in paths.values():
        client.log_artifact(parent.info.run_id, str(p), "report")
    return paths


def cli_report(sweep: str | None, spec: str | None, out: str, fmt: str | None, tracking_uri: str | None) -> int:
    """``harness report``; ``--spec FILE`` may name the sweep (``sweep:``) and the output format (``format:``)."""
    from harness.config import ConfigError, load_yaml
    from harness.tracking import tracking_uri as resolve_uri

    if spec:
        s = load_yaml(Path(spec)) or {}
        unknown = sorted(set(s) - {"sweep", "format"})
        if unknown:
            raise ConfigError([(f"{spec}: {k}", "unknown report-spec key; valid: format, sweep") for k in unknown])
        sweep, fmt = sweep or s.get("sweep"), fmt or s.get("format")
    uri = resolve_uri(tracking_uri)
    try:
        paths = build_report(uri, sweep, Path(out), fmt)
    except LookupError as e:
        print(f"error: {e}")
        return 1
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0
