"""Report specs (``reports/*.yaml``): which runs, rows, columns and figures a ``harness report`` shows.

A spec is validated by ``ReportSpec`` (unknown keys are errors naming the valid ones); each entry of its
``figures:`` list by ``FigureSpec`` (a line or scatter plot of two columns, one series per row, optional reference
lines and Pareto front). This module also holds the two checks every report makes on the raw runs, whatever the
spec: runs of one row built from different code, data, dataset manifests or sweeps (``PROVENANCE``) are split apart
or refused (``split_provenance``), and the best row is compared with every other on the seeds they share
(``paired_differences``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.config import ConfigError, load_yaml
from harness.config.errors import unknown_key_msg
from harness.report.render import pm
from harness.report.stats import INDISTINGUISHABLE, metric_label, row_labels, table_columns

# Spec column -> its header; {m} is the task's primary metric as a header spells it (top-1, mAP, segment acc., ...).
# ``metric*`` are the primary metric with both modalities and with one masked; ``top1*`` are their older names.
COLUMNS = {
    "trainable_params": "trainable params",
    "total_params": "total params",
    "gflops": "GFLOPs",
    "metric": "test {m}",
    "metric_audio_only": "{m} audio only",
    "metric_video_only": "{m} video only",
    "top1": "test {m}",
    "top1_audio_only": "{m} audio only",
    "top1_video_only": "{m} video only",
    "delta_vs_best": "Δ vs best",
    "drop_audio_only": "drop audio only",
    "drop_video_only": "drop video only",
}


def header(col: str, table: pd.DataFrame) -> str:
    """The aggregated ``table``'s column (and the shown header) of spec column ``col``."""
    head = COLUMNS.get(col, col.removeprefix("metrics.").removeprefix("params."))
    return head.format(m=metric_label(table.attrs.get("primary", "top1")))


HEADERS = {"method.name": "method", "method.fusion_layer": "fusion layer", "method.bottleneck_tokens": "Nb"}
# Tag -> the word a note uses for it. Runs that differ in any of these are never aggregated into one row.
PROVENANCE = {"tags.harness.git_sha": "git", "tags.harness.dataset_fingerprint": "data",
              "tags.harness.manifest_hash": "manifest", "tags.harness.sweep": "sweep"}  # fmt: skip
_SPANS = {"git": "code versions", "data": "dataset fingerprints", "manifest": "dataset manifests", "sweep": "sweeps"}


def _short(tag: str, value: str) -> str:
    """A provenance value as a note shows it: hashes cut to 8 characters, sweep names whole."""
    return value if tag == "tags.harness.sweep" else value[:8]


# Spec columns a figure can plot: the cost and accuracy columns of the aggregated table (not Δ/drop strings).
PLOTTABLE = [c for c in COLUMNS if not c.startswith(("delta", "drop"))]
# Figure axis label of a plotted column (the cost columns are shown in the units of the table).
AXIS_LABELS = {"trainable_params": "trainable params (M)", "total_params": "total params (M)", "gflops": "GFLOPs",
               "metric": "test {m} (%)", "metric_audio_only": "{m}, audio only (%)",
               "metric_video_only": "{m}, video only (%)", "top1": "test {m} (%)", "top1_audio_only":
               "{m}, audio only (%)", "top1_video_only": "{m}, video only (%)",
               "method.fusion_layer": "fusion layer Lf (0 = early)",
               "method.bottleneck_tokens": "bottleneck tokens Nb"}  # fmt: skip


class FigureSpec(BaseModel):
    """One figure of a report: ``y`` against ``x``, one series (or point) per table row, coloured by ``hue``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="file name part: the figure is <out stem>_<name>.png/.svg")
    title: str | None = Field(None, description="figure title; default '<y> vs <x>'")
    kind: Literal["line", "scatter"] = Field(
        "line", description="line: each series' points joined in x order; scatter: one labelled point per row"
    )
    x: str = Field(description="a row key (method.fusion_layer), a cost/accuracy column (gflops) or metrics.<name>")
    y: str = Field(
        description="a cost/metric column (metric = the task's primary one, gflops, ...) or "
        "metrics.<name>; error bars = 95% CI"
    )
    hue: str = Field("method.name", description="row key that picks a series' colour")
    references: list[str] | None = Field(
        None,
        description="hue values whose rows have no x value (late fusion has no Lf) drawn as horizontal lines with "
        "their CI band; default: every such row; [] draws none",
    )
    pareto: bool = Field(
        False, description="mark the Pareto front: the rows no other row beats with both lower x and higher y"
    )
    labels: bool = Field(False, description="write each point's row label beside it")
    logx: bool = Field(False, description="logarithmic x axis (base 2 for a row key, 10 for a cost)")
    xlabel: str | None = Field(None, description="x axis label; default from the column")
    ylabel: str | None = Field(None, description="y axis label; default from the column")

    @field_validator("y")
    @classmethod
    def _known_y(cls, col: str) -> str:
        if col not in PLOTTABLE and not col.startswith("metrics."):
            raise ValueError(f"unknown y {col!r}; valid: {', '.join(PLOTTABLE)}, metrics.<name>")
        return col

    @field_validator("x")
    @classmethod
    def _known_x(cls, col: str) -> str:
        if col in COLUMNS and col not in PLOTTABLE:
            raise ValueError(f"x {col!r} is not plottable; valid columns: {', '.join(PLOTTABLE)}, or a row key")
        return col

    @model_validator(mode="after")
    def _pareto_needs_numbers(self) -> FigureSpec:
        if self.pareto and self.x not in PLOTTABLE and not self.x.startswith("metrics."):
            raise ValueError(f"pareto: true needs a cost or metric x (e.g. gflops, trainable_params), not {self.x!r}")
        return self

    def is_row_key(self, col: str) -> bool:
        """``col`` names a param (a row key of the table), not a cost or metric column."""
        return col not in COLUMNS and not col.startswith("metrics.")


class ReportSpec(BaseModel):
    """One report: ``sweep`` (a name or several), ``filters``, ``rows``, ``columns``, ``sort_by``, ``reference``,
    ``figures``."""

    model_config = ConfigDict(extra="forbid")

    sweep: str | list[str] | None = None
    use: Literal["all", "first_found"] = "all"  # several sweeps: all of them, or the first one the store holds
    title: str | None = None
    format: str | None = None
    filters: dict[str, str | int | float | bool | list[str | int | float | bool]] = {}
    rows: list[str] | None = None  # param keys; default: method.name + the swept keys
    columns: list[str] | None = None  # default: the generic table's columns
    sort_by: str | list[str] = "metric"  # the primary metric; several: sorted by the first, ties by the next
    descending: bool = True
    reference: dict[str, float] = {}  # row label ("mbt", or "mbt, 4" for several row keys) -> published primary metric
    mixed_provenance: Literal["split", "refuse"] = "split"  # a row's runs from different code/data: split or error
    figures: list[FigureSpec] = []  # none: the generic top-1 vs fusion layer figure (when rows include method.name)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, cols: list[str] | None) -> list[str] | None:
        for c in cols or []:
            if c not in COLUMNS and not c.startswith(("metrics.", "params.")):
                raise ValueError(f"unknown column {c!r}; valid: {', '.join(COLUMNS)}, metrics.<name>, params.<key>")
        return cols

    @field_validator("sort_by")
    @classmethod
    def _known_sort(cls, cols: str | list[str]) -> str | list[str]:
        for col in [cols] if isinstance(cols, str) else cols:
            if col not in COLUMNS and not col.startswith(("metrics.", "params.")):
                raise ValueError(f"unknown column {col!r}; valid: {', '.join(COLUMNS)}, metrics.<name>, params.<key>")
        return cols

    @model_validator(mode="after")
    def _figures_fit_the_rows(self) -> ReportSpec:
        names = [f.name for f in self.figures]
        if len(set(names)) < len(names):
            raise ValueError(f"figures: names must differ (got {', '.join(names)})")
        for i, f in enumerate(self.figures):
            for axis in ("x", "hue"):
                key = getattr(f, axis).removeprefix("params.")
                if (axis == "hue" or f.is_row_key(f.x)) and self.rows is not None and key not in self.rows:
                    raise ValueError(f"figures.{i}.{axis}: {key!r} is not a row key; add it to rows: {self.rows}")
        return self

    def sweeps(self, override: str | None) -> list[str | None]:
        if override:
            return [override]
        return [self.sweep] if not isinstance(self.sweep, list) else list(self.sweep) or [None]

    def metric_columns(self) -> list[str]:
        """The ``metrics.<name>`` columns the table or a figure shows: aggregated beside the standard ones."""
        cols = [*(self.columns or []), *(f.y for f in self.figures), *(f.x for f in self.figures)]
        return list(dict.fromkeys(c for c in cols if c.startswith("metrics.")))


def load_spec(path: Path) -> ReportSpec:
    """``path`` read with ``yaml.safe_load`` and validated; raises ``ConfigError`` naming every bad key."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError([(str(path), "a report spec must be a mapping of keys")])
    try:
        return ReportSpec.model_validate(data)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                model = FigureSpec if err["loc"][0] == "figures" else ReportSpec
                msg = unknown_key_msg(str(err["loc"][-1]), list(model.model_fields))
            else:
                msg = err["msg"].replace("Input should be", "must be").removeprefix("Value error, ")
            errors.append((f"{path}: {loc}", msg))
        raise ConfigError(errors) from e


def apply_filters(runs: pd.DataFrame, filters: dict) -> pd.DataFrame:
    """Runs whose param (``method.name``) or tag (``tags.X``) equals one of the listed values (compared as text)."""
    for key, want in filters.items():
        col = key if key.startswith(("tags.", "params.", "metrics.")) else f"params.{key}"
        if col not in runs.columns:
            raise ConfigError([(f"filters.{key}", "no run has this key")])
        values = {str(v) for v in (want if isinstance(want, list) else [want])}
        runs = runs[runs[col].astype(str).isin(values)]
    return runs


def split_provenance(
    runs: pd.DataFrame, keys: list[str], refuse: bool = False
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rows whose runs differ in git SHA, dataset fingerprint, manifest hash or sweep, split apart by ``provenance``.

    Returns (runs, keys, notes): unchanged when nothing differs; else the runs gain ``params.provenance`` (empty for
    rows that agree), ``keys`` gains ``provenance`` and ``notes`` says which rows were split and why. With ``refuse``
    such rows raise ``LookupError`` naming them and what differs instead.
    """
    tags = [t for t in PROVENANCE if t in runs.columns]
    if not tags or runs.empty:
        return runs, keys, []
    runs = runs.copy()
    label = row_labels(runs, keys)
    prov = pd.Series("", index=runs.index)
    split = []  # (row, what differs)
    for row, g in runs.groupby(label, sort=False):
        differ = [t for t in tags if g[t].fillna("").nunique() > 1]
        if not differ:
            continue
        split.append((row, " and ".join(PROVENANCE[t] for t in differ)))
        prov[g.index] = g[differ].fillna("?").astype(str).apply(
            lambda r: ", ".join(f"{PROVENANCE[t]} {_short(t, v)}" for t, v in r.items()), axis=1)  # fmt: skip
    if split and refuse:
        rows = "; ".join(f"row `{row}` mixes runs of different {what}" for row, what in split)
        raise LookupError(f"{rows} (the spec says mixed_provenance: refuse; use split to list them apart)")
    if not split:
        return runs, keys, []
    runs["params.provenance"] = prov
    notes = [f"Row `{row}` is split: its runs differ in {what} (not mixed)." for row, what in split]
    return runs, [*keys, "provenance"], notes


def provenance_span(runs: pd.DataFrame) -> str:
    """A note when the report's runs come from several code versions, datasets, manifests or sweeps ('' if one)."""
    tags = [t for t in PROVENANCE if t in runs.columns]
    values = {t: sorted(_short(t, str(v)) or "?" for v in runs[t].fillna("").unique()) for t in tags}
    spans = [f"{len(v)} {_SPANS[PROVENANCE[t]]} ({', '.join(v)})" for t, v in values.items() if len(v) > 1]
    return f"The runs of this report span {', '.join(spans)}; a row never mixes them." if spans else ""


def paired_markdown(pairs: pd.DataFrame) -> str:
    """The "paired differences" section for the Markdown report ('' when there is nothing to compare)."""
    if pairs.empty:
        return ""
    what = f"test {pairs['metric'].iloc[0]}" if "metric" in pairs else "test top-1"
    lines = [f"## Paired differences ({what}, `{pairs['best'].iloc[0]}` minus each row, over shared seeds)", ""]
    for r in paired_lines(pairs):
        lines.append(f"- {r}")
    return "\n".join(lines) + f"\n\n{INDISTINGUISHABLE}.\n"


def paired_lines(pairs: pd.DataFrame) -> list[str]:
    """One line of text per paired difference (every format renders these): ``vs `late`: +10.0 ± 2.5 (n = 3)``."""
    out = []
    for r in pairs.itertuples(index=False):
        mark = " ≈" if r.indistinguishable else ""
        ci = "" if pd.isna(r.ci95) else f" ± {r.ci95:.1f}"
        out.append(f"vs `{r.row}`: {r.mean:+.1f}{ci} (n = {r.n}){mark}")
    return out


def _numeric_first(col: pd.Series) -> pd.Series:
    """Sort key: a column of numbers written as text ("16", "2", "—") sorts by value, the non-numbers last."""
    if pd.api.types.is_numeric_dtype(col):
        return col
    num = pd.to_numeric(col, errors="coerce")
    return num if num.notna().any() else col


def spec_table(table: pd.DataFrame, runs: pd.DataFrame, keys: list[str], spec: ReportSpec) -> pd.DataFrame:
    """The aggregated ``table`` as the strings of the spec's columns (row keys first, ``n`` last), sorted."""
    t = table.copy()
    both, audio, video = table_columns(table)
    top = t[both]
    t["Δ vs best"] = top - top.max()
    t["drop audio only"], t["drop video only"] = top - t[audio], top - t[video]
    label = row_labels(t.rename(columns={k: f"params.{k}" for k in keys}), keys)  # as the runs' labels
    paper = t[[k for k in keys if k != "provenance"]].astype(str).agg(", ".join, axis=1).map(spec.reference)
    by = [spec.sort_by] if isinstance(spec.sort_by, str) else spec.sort_by
    sort = [c for c in (header(b, table) for b in by) if c in t.columns]
    if sort:
        t = t.assign(_label=label, _paper=paper)
        t = t.sort_values(sort, ascending=not spec.descending, kind="stable", key=_numeric_first)
        label, paper = t.pop("_label"), t.pop("_paper")
    show = pd.DataFrame({HEADERS.get(k, k): t[k].astype(str) for k in keys})
    for col in spec.columns or ["trainable_params", "total_params", "gflops", "metric", "metric_audio_only",
                                "metric_video_only", "delta_vs_best"]:  # fmt: skip
        head = header(col, table)
        if col.startswith("params."):
            if col not in runs.columns:
                show[head] = "—"
                continue
            first = runs.groupby(row_labels(runs, keys))[col].agg(lambda v: v.iloc[0] if v.nunique() == 1 else "—")
            show[head] = label.map(first).fillna("—")
        elif col in ("trainable_params", "total_params"):
            show[head] = t[head].map(lambda v: f"{v / 1e6:.3f} M")
        elif col == "gflops":
            show[head] = t[head].map(lambda v: f"{v:.4f}")
        elif head in table_columns(table) or col.startswith("metrics."):
            show[head] = [pm(m, c) for m, c in zip(t[head], t[f"{head} ci95"])]
        else:
            show[head] = t[head].map(lambda v: "—" if pd.isna(v) else f"{v:+.1f}")
    if spec.reference:
        show[f"paper {metric_label(table.attrs.get('primary', 'top1'))}"] = paper.map(
            lambda v: "—" if pd.isna(v) else f"{v:.1f}")  # fmt: skip
        show["Δ vs paper"] = (t[both] - paper).map(lambda v: "—" if pd.isna(v) else f"{v:+.1f}")
    show["n"] = t["n"].astype(str)
    return show.reset_index(drop=True)


def figure_data(table: pd.DataFrame, keys: list[str], fig: FigureSpec) -> pd.DataFrame:
    """The points of ``fig``: one per row of the aggregated ``table`` with a numeric y.

    Columns: ``series`` (the row's label without x: what a line joins), ``hue`` (colour), ``label`` (the whole row),
    ``x`` (NaN for a row without an x value: a reference line), ``y`` and ``yerr`` (95% CI half-width; NaN for
    n = 1: no bar is drawn, rather than one of zero width).
    Row keys are ``table`` columns holding text (``"—"`` when a run lacks the param); costs and metrics are numbers,
    the parameter counts in millions.
    """

    def column(name: str) -> tuple[pd.Series, pd.Series]:
        head = header(name, table)
        if fig.is_row_key(name):
            key = name.removeprefix("params.")
            if key not in table.columns:
                raise LookupError(f"figure {fig.name!r}: no row key {key!r}; the rows are {', '.join(keys)}")
            return pd.to_numeric(table[key], errors="coerce"), pd.Series(0.0, index=table.index)
        if head not in table.columns:
            raise LookupError(f"figure {fig.name!r}: the report has no column {name!r}")
        scale = 1e6 if name in ("trainable_params", "total_params") else 1.0
        ci = table.get(f"{head} ci95", pd.Series(0.0, index=table.index))
        return table[head].astype(float) / scale, ci.astype(float) / scale

    x, _ = column(fig.x)
    y, yerr = column(fig.y)
    rest = [k for k in keys if k != fig.x.removeprefix("params.")]
    hue = fig.hue.removeprefix("params.")
    if hue not in table.columns:
        raise LookupError(f"figure {fig.name!r}: hue {hue!r} is not a row key; the rows are {', '.join(keys)}")
    text = table[rest].astype(str) if rest else pd.DataFrame({"_": [""] * len(table)}, index=table.index)
    series = text.apply(lambda r: ", ".join(v for v in r if v not in ("", "—")), axis=1)
    label = table[keys].astype(str).apply(lambda r: ", ".join(v for v in r if v not in ("", "—")), axis=1)
    hues = table[hue].astype(str)
    if "provenance" in table.columns:  # split rows stay apart in the figure too
        hues = hues.where(table["provenance"].fillna("") == "", hues + " [" + table["provenance"].astype(str) + "]")
    data = pd.DataFrame({"series": series, "hue": hues, "label": label, "x": x, "y": y, "yerr": yerr})
    data.attrs["primary"] = table.attrs.get("primary", "test/top1")  # what the axis labels name
    data = data[data["y"].notna()]
    if fig.references is not None:  # rows without x: only the listed hues become reference lines
        data = data[data["x"].notna() | table.loc[data.index, hue].astype(str).isin(fig.references)]
    return data.reset_index(drop=True)
