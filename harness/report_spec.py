"""Report specs (``reports/*.yaml``): which runs, rows and columns a ``harness report`` table shows.

A spec is validated by ``ReportSpec`` (unknown keys are errors naming the valid ones). This module also holds the
two checks every report makes on the raw runs, whatever the spec: runs of one row built from different code or data
(``tags.harness.git_sha``, ``tags.harness.dataset_fingerprint``) are split apart (``split_provenance``), and the best
row is compared with every other on the seeds they share (``paired_differences``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from harness.report_render import METRICS, pm

# Spec column -> (header, how it is computed from the aggregated table).
COLUMNS = {
    "trainable_params": "trainable params",
    "total_params": "total params",
    "gflops": "GFLOPs",
    "top1": "test top-1",
    "top1_audio_only": "top-1 audio only",
    "top1_video_only": "top-1 video only",
    "delta_vs_best": "Δ vs best",
    "drop_audio_only": "drop audio only",
    "drop_video_only": "drop video only",
}
HEADERS = {"method.name": "method", "method.fusion_layer": "fusion layer"}
PROVENANCE = {"tags.harness.git_sha": "git", "tags.harness.dataset_fingerprint": "data"}


class ReportSpec(BaseModel):
    """One report: ``sweep`` (a name or several), ``filters``, ``rows``, ``columns``, ``sort_by``, ``reference``."""

    model_config = ConfigDict(extra="forbid")

    sweep: str | list[str] | None = None
    title: str | None = None
    format: str | None = None
    filters: dict[str, str | int | float | bool | list[str | int | float | bool]] = {}
    rows: list[str] | None = None  # param keys; default: method.name + the swept keys
    columns: list[str] | None = None  # default: the generic table's columns
    sort_by: str = "top1"
    descending: bool = True
    reference: dict[str, float] = {}  # row label ("mbt", or "mbt, 4" for several row keys) -> published top-1

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, cols: list[str] | None) -> list[str] | None:
        for c in cols or []:
            if c not in COLUMNS and not c.startswith(("metrics.", "params.")):
                raise ValueError(f"unknown column {c!r}; valid: {', '.join(COLUMNS)}, metrics.<name>, params.<key>")
        return cols

    @field_validator("sort_by")
    @classmethod
    def _known_sort(cls, col: str) -> str:
        if col not in COLUMNS and not col.startswith(("metrics.", "params.")):
            raise ValueError(f"unknown column {col!r}; valid: {', '.join(COLUMNS)}, metrics.<name>, params.<key>")
        return col

    def sweeps(self, override: str | None) -> list[str | None]:
        if override:
            return [override]
        return [self.sweep] if not isinstance(self.sweep, list) else list(self.sweep) or [None]


def load_spec(path: Path) -> ReportSpec:
    """``path`` read with ``yaml.safe_load`` and validated; raises ``ConfigError`` naming every bad key."""
    from harness.config import ConfigError, _unknown_key_msg, load_yaml

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
                msg = _unknown_key_msg(str(err["loc"][-1]), list(ReportSpec.model_fields))
            else:
                msg = err["msg"].replace("Input should be", "must be").removeprefix("Value error, ")
            errors.append((f"{path}: {loc}", msg))
        raise ConfigError(errors) from e


def apply_filters(runs: pd.DataFrame, filters: dict) -> pd.DataFrame:
    """Runs whose param (``method.name``) or tag (``tags.X``) equals one of the listed values (compared as text)."""
    from harness.config import ConfigError

    for key, want in filters.items():
        col = key if key.startswith(("tags.", "params.", "metrics.")) else f"params.{key}"
        if col not in runs.columns:
            raise ConfigError([(f"filters.{key}", "no run has this key")])
        values = {str(v) for v in (want if isinstance(want, list) else [want])}
        runs = runs[runs[col].astype(str).isin(values)]
    return runs


def row_labels(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each run's row as text: its values of ``keys`` joined by ", " (missing: "—")."""
    parts = [runs[f"params.{k}"].fillna("—").astype(str) for k in keys]
    return parts[0].str.cat(parts[1:], sep=", ") if len(parts) > 1 else parts[0]


def split_provenance(runs: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rows whose runs differ in git SHA or dataset fingerprint, split apart by a ``provenance`` key.

    Returns (runs, keys, notes): unchanged when nothing differs; else the runs gain ``params.provenance`` (empty for
    rows that agree), ``keys`` gains ``provenance`` and ``notes`` says which rows were split and why.
    """
    tags = [t for t in PROVENANCE if t in runs.columns]
    if not tags or runs.empty:
        return runs, keys, []
    runs = runs.copy()
    label = row_labels(runs, keys)
    prov = pd.Series("", index=runs.index)
    notes = []
    for row, g in runs.groupby(label, sort=False):
        differ = [t for t in tags if g[t].fillna("").nunique() > 1]
        if not differ:
            continue
        what = " and ".join(PROVENANCE[t] for t in differ)
        prov[g.index] = g[differ].fillna("?").astype(str).apply(
            lambda r: ", ".join(f"{PROVENANCE[t]} {v[:8]}" for t, v in r.items()), axis=1)  # fmt: skip
        notes.append(f"Row `{row}` is split: its runs differ in {what} (not mixed).")
    if not notes:
        return runs, keys, []
    runs["params.provenance"] = prov
    return runs, [*keys, "provenance"], notes


def paired_differences(runs: pd.DataFrame, keys: list[str], metric: str = "metrics.test/top1") -> pd.DataFrame:
    """The best row (highest mean ``metric``) minus each other row over the seeds both have.

    One line per other row with at least two shared seeds: ``row``, ``mean`` and ``ci95`` of the paired difference,
    ``n`` shared seeds, and ``overlap`` (the two rows' own 95% CIs overlap). Empty when no pair qualifies.
    """
    from harness.report import t_interval

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


def paired_markdown(pairs: pd.DataFrame) -> str:
    """The "paired differences" section for the Markdown report ('' when there is nothing to compare)."""
    if pairs.empty:
        return ""
    lines = [f"## Paired differences (test top-1, `{pairs['best'].iloc[0]}` minus each row, over shared seeds)", ""]
    for r in pairs.itertuples(index=False):
        mark = " ≈ (CIs overlap)" if r.overlap else ""
        lines.append(f"- vs `{r.row}`: {r.mean:+.1f} ± {0.0 if pd.isna(r.ci95) else r.ci95:.1f} (n = {r.n}){mark}")
    return "\n".join(lines) + "\n"


def spec_table(table: pd.DataFrame, runs: pd.DataFrame, keys: list[str], spec: ReportSpec) -> pd.DataFrame:
    """The aggregated ``table`` as the strings of the spec's columns (row keys first, ``n`` last), sorted."""
    t = table.copy()
    top = t["test top-1"]
    t["Δ vs best"] = top - top.max()
    t["drop audio only"], t["drop video only"] = top - t["top-1 audio only"], top - t["top-1 video only"]
    label = t[keys].astype(str).agg(", ".join, axis=1)
    paper = t[[k for k in keys if k != "provenance"]].astype(str).agg(", ".join, axis=1).map(spec.reference)
    sort = COLUMNS.get(spec.sort_by, spec.sort_by.removeprefix("params."))
    if sort in t.columns:
        t = t.assign(_label=label, _paper=paper).sort_values(sort, ascending=not spec.descending, kind="stable")
        label, paper = t.pop("_label"), t.pop("_paper")
    show = pd.DataFrame({HEADERS.get(k, k): t[k].astype(str) for k in keys})
    for col in spec.columns or list(COLUMNS)[:7]:
        head = COLUMNS.get(col, col.removeprefix("metrics.").removeprefix("params."))
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
        elif head in METRICS or col.startswith("metrics."):
            show[head] = [pm(m, c) for m, c in zip(t[head], t[f"{head} ci95"])]
        else:
            show[head] = t[head].map(lambda v: "—" if pd.isna(v) else f"{v:+.1f}")
    if spec.reference:
        show["paper top-1"] = paper.map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")
        show["Δ vs paper"] = (t["test top-1"] - paper).map(lambda v: "—" if pd.isna(v) else f"{v:+.1f}")
    show["n"] = t["n"].astype(str)
    return show.reset_index(drop=True)
