"""The report's figures: grouped bars of a method table, top-1 against the fusion layer, and the spec figures
(line / scatter with CIs, reference lines, a Pareto front), each saved as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.spec import AXIS_LABELS
from harness.report.stats import metric_label, table_columns


def colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10 (the default look), tab20 up to 20, then evenly spaced hues."""
    import seaborn as sns

    n = max(n, 1)
    return sns.color_palette("tab10" if n <= 10 else "tab20" if n <= 20 else "husl", n)


def save(plt, fig, paths: list[Path]) -> None:
    """Lay ``fig`` out, write it to each of ``paths`` (the format follows the suffix) and release it."""
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)


BARS = ("both modalities", "audio only", "video only")  # the legend of the primary metric's three columns


def bars_of(table: pd.DataFrame) -> dict[str, str]:
    """The table's primary-metric columns -> their legend entries (``{"test mAP": "both modalities", ...}``)."""
    return dict(zip(table_columns(table), BARS))


def bar_data(table: pd.DataFrame) -> pd.DataFrame:
    """One row per table row, in the table's order: ``label`` and, per primary-metric column present (with both
    modalities, audio only, video only), its mean and CI."""
    label = table["method.name"].astype(str)
    layer = table.get("method.fusion_layer", pd.Series("—", index=table.index)).astype(str)
    out = pd.DataFrame({"label": [m if lf == "—" else f"{m} (Lf {lf})" for m, lf in zip(label, layer, strict=True)]})
    for col in (c for c in bars_of(table) if c in table):
        out[col] = table[col].to_numpy()
        out[f"{col} ci95"] = table.get(f"{col} ci95", pd.Series(float("nan"), index=table.index)).to_numpy()
    return out


def bars(table: pd.DataFrame, paths: list[Path], title: str):
    """Grouped bars per row (the table's order): the primary metric with both modalities and, where the table has
    them, with one masked; 95% CI as error bars where a row has more than one seed. Saved to each of ``paths``;
    returns the Axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    data = bar_data(table)
    legend = bars_of(table)
    cols = [c for c in legend if c in data]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(data) + 2), 4.5))
    x, width = np.arange(len(data)), 0.8 / len(cols)
    for i, (col, colour) in enumerate(zip(cols, colours(len(cols)), strict=True)):
        ci = data[f"{col} ci95"].to_numpy()  # NaN (n = 1): no error bar, rather than a cap at zero width
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, data[col], width, yerr=ci, capsize=2, label=legend[col],
               color=colour)  # fmt: skip
    ax.set_xticks(x, data["label"], rotation=35, ha="right")
    ax.set_ylabel(f"{cols[0]} (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    save(plt, fig, paths)
    return ax


def figure(table: pd.DataFrame, paths: list[Path], title: str) -> None:
    """The default figure of a method table, saved to each of ``paths`` (PNG, SVG, ...).

    When some method was run at several fusion layers: the primary metric (mean ± 95% CI) against the fusion layer
    per method,
    methods without one as horizontal bands (mean, CI). Otherwise (one row per method, e.g. the all-methods table):
    grouped bars per row (:func:`bars`).
    """
    layers = table.loc[table["method.fusion_layer"] != "—"].groupby("method.name")["method.fusion_layer"].nunique()
    if layers.empty or layers.max() < 2:
        bars(table, paths, title.replace(" vs fusion layer", " per method"))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    both = next(iter(table_columns(table)))  # "test top-1", "test mAP", ...
    palette = dict(zip(table["method.name"].unique(), colours(table["method.name"].nunique())))
    layered = table[table["method.fusion_layer"] != "—"]
    methods = list(layered["method.name"].unique())
    for i, (method, g) in enumerate(layered.groupby("method.name", sort=False)):
        dodge = 0.06 * (i - (len(methods) - 1) / 2)  # methods at the same Lf side by side
        g = g.assign(lf=g["method.fusion_layer"].astype(int) + dodge).sort_values("lf")
        ax.errorbar(g["lf"], g[both], yerr=g[f"{both} ci95"], marker="o", capsize=3,
                    label=method, color=palette[method])  # fmt: skip
    flat = table.drop(layered.index)
    for _, r in flat.iterrows():
        c, m, ci = palette[r["method.name"]], r[both], r[f"{both} ci95"]
        ax.axhline(m, ls="--", color=c, label=r["method.name"])
        if not pd.isna(ci):
            ax.axhspan(m - ci, m + ci, color=c, alpha=0.12)
    ax.set_xlabel("fusion layer Lf (0 = early, L = late)")
    ax.set_ylabel(f"{both} (%)")
    ax.set_title(title)
    if not layered.empty:
        lfs = sorted(layered["method.fusion_layer"].astype(int).unique())
        ax.set_xticks(lfs)
        ax.set_xlim(lfs[0] - 0.5, lfs[-1] + 0.5)  # one Lf alone would otherwise spread its dodged points wide
    ax.legend(fontsize=8, loc="best")
    save(plt, fig, paths)


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """True for the points no other point dominates: none has x <= and y >= with at least one strict (lower cost,
    higher accuracy). Equal points are all on the front."""
    xs, ys = x.to_numpy(float), y.to_numpy(float)
    on = [not any((xs <= xi) & (ys >= yi) & ((xs < xi) | (ys > yi))) for xi, yi in zip(xs, ys)]
    return pd.Series(on, index=x.index)


def spec_figure(data: pd.DataFrame, fig, paths: list[Path], title: str) -> list[str]:
    """Draw one spec figure (``spec.FigureSpec``) from ``spec.figure_data`` points; save to ``paths``.

    Points with an x: error bars (95% CI of y); ``line`` joins a series in x order, ``scatter`` leaves points alone.
    Points without an x: horizontal reference lines with their CI band. ``pareto`` rings the front and joins it by a
    step line. Returns the labels of the Pareto front (empty without ``pareto``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig_, ax = plt.subplots(figsize=(7, 4.5))
    palette = dict(zip(data["hue"].unique(), colours(data["hue"].nunique())))
    placed, refs = data[data["x"].notna()], data[data["x"].isna()]
    series = list(placed["series"].unique())
    xs = sorted(placed["x"].unique())
    step = min((b - a for a, b in zip(xs, xs[1:])), default=1.0)
    dodge_lines = fig.kind == "line" and fig.is_row_key(fig.x) and not fig.logx
    seen = set()
    for i, (name, g) in enumerate(placed.groupby("series", sort=False)):
        g = g.sort_values("x")
        shift = 0.04 * step * (i - (len(series) - 1) / 2) if dodge_lines else 0.0  # same x side by side
        color = palette[g["hue"].iloc[0]]
        label = name if name not in seen else None
        seen.add(name)
        ax.errorbar(g["x"] + shift, g["y"], yerr=g["yerr"], marker="o", capsize=3, color=color, label=label,
                    ls="-" if fig.kind == "line" else "none", ms=6)  # fmt: skip
        if fig.labels:
            for r in g.itertuples():
                ax.annotate(r.label, (r.x, r.y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for r in refs.itertuples():
        color = palette[r.hue]
        ax.axhline(r.y, ls="--", color=color, label=r.label)
        if r.yerr > 0:  # NaN (n = 1) too: no band
            ax.axhspan(r.y - r.yerr, r.y + r.yerr, color=color, alpha=0.12)
    front = []
    if fig.pareto and not placed.empty:
        on = placed[pareto_front(placed["x"], placed["y"])].sort_values("x")
        front = list(on["label"])
        ax.scatter(on["x"], on["y"], s=220, facecolors="none", edgecolors="black", linewidths=1.5, zorder=5,
                   label="Pareto front")  # fmt: skip
        ax.step(on["x"], on["y"], where="post", color="black", lw=1, ls=":", zorder=4)
    if fig.logx:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log", base=2 if fig.is_row_key(fig.x) else 10)
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:.3g}"))  # 0.3, not 3×10⁻¹
    if fig.is_row_key(fig.x) and xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.minorticks_off()
    key, m = fig.x.removeprefix("params."), metric_label(data.attrs.get("primary", "test/top1"))
    ax.set_xlabel(fig.xlabel or AXIS_LABELS.get(key, key.removeprefix("metrics.")).format(m=m))
    ax.set_ylabel(fig.ylabel or AXIS_LABELS.get(fig.y, fig.y.removeprefix("metrics.")).format(m=m))
    ax.set_title(title, fontsize=11)
    ax.margins(x=0.12 if fig.labels else 0.05)  # room for the labels of the outermost points
    ax.legend(fontsize=8, loc="best")
    save(plt, fig_, paths)
    return front
