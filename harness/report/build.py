"""``harness report``: the comparison table and figure of a sweep, built from MLflow alone.

Reads the FINISHED child runs of the latest sweep (or ``--sweep NAME``), groups them by method and the swept keys,
aggregates the seeds as mean ± 95% t-interval with n, and writes the table in the format of ``--out`` (Markdown,
CSV, a LaTeX tabular, or one self-contained HTML page), the raw aggregates as CSV, and the figure of the primary
metric against the fusion layer as PNG and SVG (``harness.report.render`` formats). A spec (``reports/X.yaml``,
``harness.report.spec``) picks the sweeps, rows, columns and figures instead. The files are also logged as artifacts
of the sweep's parent run. Tables, sorting, paired differences, figures and the Δ vs paper are in the primary metric
of the runs' task (``harness.report.stats.primary_metric``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from harness.config import ConfigError
from harness.report.figures import figure, spec_figure
from harness.report.render import FORMATS, display_table, to_html, to_latex, to_markdown
from harness.report.spec import (
    apply_filters,
    figure_data,
    load_spec,
    paired_lines,
    paired_markdown,
    provenance_span,
    spec_table,
    split_provenance,
)
from harness.report.stats import INDISTINGUISHABLE, aggregate, metric_label, paired_differences, primary_metric
from harness.tracking import missing_store, redact
from harness.tracking import tracking_uri as resolve_uri

# Params that never define a row: they differ between seeds or only say where things were stored.
_NOT_A_KEY = {"seed", "name", "cache_dir", "tracking.uri", "tracking.experiment", "train.threads"}


def sweep_parents(client, sweep: str | None) -> list:
    """The parent runs of every invocation of ``sweep`` (of any sweep if None), latest first; raises ``LookupError``."""
    exps = client.search_experiments()
    filt = "tags.`harness.sweep` = '{}'".format(sweep.replace("'", "\\'")) if sweep else "tags.`harness.sweep` != ''"
    found = client.search_runs([e.experiment_id for e in exps], filt, order_by=["attributes.start_time DESC"])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        names = sorted({e.name for e in exps if e.name != "Default"})
        what = f"no sweep named '{sweep}'" if sweep else "no sweep"
        raise LookupError(f"{what} in the MLflow store {redact(client.tracking_uri)}; experiments there: "
                          f"{', '.join(names) or 'none'}. Run `harness sweep FILE` first, or pass --tracking-uri "
                          "/ --sweep.")  # fmt: skip
    return parents


def _finished(client, parent) -> int:
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                              "and attributes.status = 'FINISHED'", max_results=1)  # fmt: skip
    return len(kids)


def find_sweep(client, sweep: str | None):
    """The parent run of the latest invocation of ``sweep``; without a name, of the latest sweep invocation that has
    a FINISHED trial (the latest one if none has). Raises ``LookupError``."""
    parents = sweep_parents(client, sweep)
    if sweep is None:
        return next((p for p in parents if _finished(client, p)), parents[0])
    return parents[0]


def earlier_invocations(client, parent) -> str | None:
    """A note naming the other invocations of ``parent``'s sweep (the report uses this one only); None if none."""
    name = parent.data.tags.get("harness.sweep")
    others = [p for p in sweep_parents(client, name) if p.info.run_id != parent.info.run_id] if name else []
    if not others:
        return None
    shown = "; ".join(f"`{p.info.run_id}` (hash `{p.data.tags.get('harness.sweep_hash', '?')[:12]}`, "
                      f"{p.info.status})" for p in others[:5]) + (f"; and {len(others) - 5} more" if len(others) > 5
                                                                 else "")  # fmt: skip
    return (
        f"Sweep `{name}` has {len(others)} other invocation{'s' if len(others) > 1 else ''} in this store "
        f"({shown}); this report uses parent run `{parent.info.run_id}` only."
    )


# Params that say what budget a number was bought with; every table's caption states them.
BUDGET = {"train.epochs": "epochs", "dataset.name": "data", "backbone.name": "backbone", "engine.name": "engine"}


def budget(runs: pd.DataFrame) -> str:
    """``Budget: 10 epochs; data synthetic (manifest 1a2b3c4d5e6f); backbone tiny; engine torch; precision bf16.``:
    what the rows were trained with, from the runs' params and data tags; a value that differs between runs is
    listed with every value ("per row")."""

    def values(col: str) -> list[str]:
        return sorted(map(str, runs[col].dropna().unique())) if col in runs.columns else []

    def text(vals: list[str]) -> str:
        return vals[0] if len(vals) == 1 else f"{' / '.join(vals)} (per row)" if vals else "—"

    parts = []
    for key, what in BUDGET.items():
        vals = values(f"params.{key}")
        if key == "dataset.name":
            subset = [c for c in runs.columns if c.startswith("params.dataset.") and any(
                w in c for w in ("subset", "max_clips", "limit", "fraction", "num_clips", "clips_per"))]  # fmt: skip
            extra = [f"{c.removeprefix('params.dataset.')} {text(values(c))}" for c in subset]
            data = [f"manifest `{h[:12]}`" for h in values("tags.harness.manifest_hash")]
            data = data or [f"fingerprint `{h[:12]}`" for h in values("tags.harness.dataset_fingerprint")]
            inner = ", ".join(extra + data)
            parts.append(f"data {text(vals)}" + (f" ({inner})" if inner else ""))
        else:
            parts.append(f"{text(vals)} epochs" if what == "epochs" else f"{what} {text(vals)}")
    for col in sorted(c for c in runs.columns if c.startswith("params.") and c.endswith(("precision", "dtype"))):
        parts.append(f"{col.removeprefix('params.')} {text(values(col))}")
    return "Budget: " + "; ".join(parts) + "."


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


NOT_MATCHED = "ASHA: not matched"


def mark_budget(runs: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rows of early-stopping sweeps (tag ``harness.budget_matched=false``, ``tune.scheduler: asha``) get a ``budget``
    key of their own and a note: their trials did not all train the same number of epochs, and only the survivors
    are reported. Returns the runs, the keys and the notes, unchanged when every run is budget-matched."""
    col = "tags.harness.budget_matched"
    if col not in runs.columns or not (runs[col] == "false").any():
        return runs, keys, []
    runs = runs.assign(**{"params.budget": runs[col].map(lambda v: NOT_MATCHED if v == "false" else "full")})
    note = (
        f"Rows with budget `{NOT_MATCHED}` come from sweeps with early stopping (`tune.scheduler: asha`): "
        "weak trials were stopped before their last epoch and only the trials that ran to the end are reported, "
        "so these rows are not budget-matched with full-budget rows. Use them to explore, not as a paper table."
    )
    return runs, [*keys, "budget"], [note]


def incomplete(client, parent, keys: list[str]) -> str | None:
    """A note when the sweep of ``parent`` is incomplete (interrupted, still running, or with trials that did not
    finish), naming the trials that are missing; None when every trial finished."""
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                              max_results=50000)  # fmt: skip
    stopped = [r for r in kids if r.data.tags.get("harness.stopped_early") == "true"]
    done = [r for r in kids if r.info.status == "FINISHED"]
    missing = [r for r in kids if r.info.status != "FINISHED" and r not in stopped]
    total = int(parent.data.tags.get("harness.num_trials", len(kids)))
    not_started = max(0, total - len(kids))
    if parent.info.status == "FINISHED" and not missing and not not_started:
        return None
    state = {"KILLED": "interrupted", "RUNNING": "still running (or its driver died)"}.get(parent.info.status, "ended")

    def label(r) -> str:
        shown = " ".join(f"{k}={r.data.params[k]}" for k in [*keys, "seed"] if k in r.data.params) or r.info.run_id
        why = "interrupted" if r.data.tags.get("harness.interrupted") == "true" else r.info.status
        return f"{shown} ({why})"

    names = [label(r) for r in missing] + ([f"{not_started} not started"] if not_started else [])
    name = parent.data.tags.get("harness.sweep", "?")
    return (f"INCOMPLETE: sweep `{name}` is {state}: {len(done)} of {total} trials finished; missing: "
            f"{'; '.join(names) or 'none'}. Finish it with `harness sweep FILE --resume`.")  # fmt: skip


def report_format(out: Path, fmt: str | None) -> str:
    """``fmt``, else the suffix of ``out`` (no suffix: ``md``); raises ``ConfigError`` for anything else."""
    chosen = fmt or out.suffix.lstrip(".").lower() or "md"
    if chosen not in FORMATS:
        where = f"format: {fmt}" if fmt else f"--out {out}: suffix '{out.suffix}'"
        raise ConfigError([(where, f"unknown report format; valid: {', '.join(FORMATS)} (by suffix or --format)")])
    return chosen


def _parents(client, sweeps: list[str | None], first_found: bool) -> list:
    """The parent runs of the latest invocation of each of ``sweeps``; with ``first_found`` only the first of them
    the store holds (later ones are fallbacks). LookupError if none."""
    if not first_found:
        return [find_sweep(client, s) for s in sweeps]
    for s in sweeps:
        try:
            return [find_sweep(client, s)]
        except LookupError:
            continue
    raise LookupError(f"none of the sweeps {', '.join(map(str, sweeps))} is in this MLflow store; "
                      "run one of them first (`harness sweep sweeps/NAME.yaml`)")  # fmt: skip


def _runs(uri: str, client, sweeps: list[str | None], first_found: bool = False) -> tuple[pd.DataFrame, list]:
    """FINISHED child runs of the latest invocation of each of ``sweeps``, and their parent runs."""
    parents = _parents(client, sweeps, first_found)
    frames = [child_runs(uri, p) for p in parents]
    for p, f in zip(parents, frames):
        if f.empty:
            name = p.data.tags["harness.sweep"]
            raise LookupError(f"sweep '{name}' (parent run {p.info.run_id}) has no FINISHED trials to report")
    return pd.concat(frames, ignore_index=True), parents


def _rows(runs: pd.DataFrame, spec, sweep: str | None, names: list[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The runs with the report's row keys (provenance and budget splits added) and the notes those splits need."""
    keys = spec.rows if spec and spec.rows else swept_keys(runs)
    missing = [k for k in keys if f"params.{k}" not in runs.columns]
    if missing:
        raise ConfigError([("rows", f"no run has the param {k!r}") for k in missing])
    runs, keys, notes = split_provenance(runs, keys, refuse=bool(spec and spec.mixed_provenance == "refuse"))
    notes += [span] if (span := provenance_span(runs)) else []
    runs, keys, budget_notes = mark_budget(runs, keys)
    notes += budget_notes
    if spec and spec.use == "first_found" and names[0] != spec.sweeps(sweep)[0]:
        notes.append(f"No sweep `{spec.sweeps(sweep)[0]}` in this store yet: `{names[0]}` stands in for it.")
    return runs, keys, notes


def _figures(table: pd.DataFrame, keys: list[str], spec, out: Path, name: str, paths: dict[str, Path]) -> list:
    """Draw the report's figures into ``paths`` (kind -> file); returns the spec figures' (title, PNG, caption)."""
    if "method.name" in keys and not (spec and spec.figures):
        label = metric_label(table.attrs["primary"])
        figure(table, [paths["png"], paths["svg"]], f"{name}: test {label} vs fusion layer")
    else:
        del paths["png"], paths["svg"]
    figs = _spec_figures(table, keys, spec, out, name) if spec else []
    for _head, png, _caption in figs:
        fig_name = png.stem.removeprefix(f"{out.stem}_")
        paths[f"png:{fig_name}"], paths[f"svg:{fig_name}"] = png, png.with_suffix(".svg")
    return figs


def _write(out: Path, fmt: str, show: pd.DataFrame, title: str, note: str, notes: list[str], after: str,
           paths: dict[str, Path], figs: list, table: pd.DataFrame, pairs: pd.DataFrame) -> None:  # fmt: skip
    """The table in ``fmt`` at ``out``; every format carries the same sections: the caption (what the numbers are,
    the budget), the notes, the paired differences with their rule, the figures."""
    sections = [("Notes", notes)] if notes else []
    if not pairs.empty:
        head = f"Paired differences (test {pairs['metric'].iloc[0]}, `{pairs['best'].iloc[0]}` minus each row)"
        sections.append((head, [*paired_lines(pairs), f"{INDISTINGUISHABLE}."]))
    label = "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", out.stem)
    if fmt == "md":
        md_figs = [(head, png.name, caption) for head, png, caption in figs]
        out.write_text(to_markdown(show, title, note, paths.get("png", Path()).name or None, after, md_figs))
    elif fmt == "tex":
        out.write_text(to_latex(show, title, note, table, label, sections))
    elif fmt == "html":
        out.write_text(to_html(show, title, note, png=paths.get("png"), figures=figs, table=table, sections=sections,
                               metric=metric_label(show.attrs.get("primary", "top1"))))  # fmt: skip


def claim(out: Path, parents: list, overwrite: bool) -> Path:
    """Refuse to replace a report of another sweep invocation at ``out`` (unless ``overwrite``): each report writes
    ``<out stem>.report.json`` naming its parent runs. Returns that file's path."""
    import json

    marker = out.with_name(f"{out.stem}.report.json")
    ids = [p.info.run_id for p in parents]
    if marker.is_file() and not overwrite:
        before = json.loads(marker.read_text())
        if before.get("parent_runs") != ids:
            runs = before.get("parent_runs", [])
            raise FileExistsError(
                f"{out} holds the report of another sweep invocation ({', '.join(before.get('sweeps', []))}: parent "
                f"run{'s' if len(runs) != 1 else ''} {', '.join(runs)}, {before.get('budget', '')}); this one is "
                f"parent run {', '.join(ids)}. Pick another --out, or pass --overwrite to replace it"
            )
    elif out.exists() and not marker.is_file():
        print(f"note: replacing {out}, which names no sweep invocation", file=sys.stderr)
    return marker


def build_report(uri: str, sweep: str | None, out: Path, fmt: str | None = None, spec=None,
                 overwrite: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write the report of ``sweep`` (latest sweep if None) and log it to the sweep's parent run.

    ``out`` gets the table in ``fmt`` (default: its suffix): ``md``, ``csv``, ``tex`` (a booktabs tabular) or
    ``html`` (one self-contained page, figure inlined). Beside it, whatever the format: the raw aggregates as CSV
    and the figure as PNG and SVG. ``spec`` (a ``ReportSpec``) picks sweeps, runs, rows and columns; without it the
    generic comparison. A report of another sweep invocation at ``out`` is not replaced without ``overwrite``
    (:func:`claim`: ``FileExistsError``). Returns ``{kind: path}`` for every file written.
    """
    from mlflow.tracking import MlflowClient

    fmt = report_format(out, fmt or (spec.format if spec else None))
    client = MlflowClient(uri)
    runs, parents = _runs(
        uri, client, spec.sweeps(sweep) if spec else [sweep], bool(spec and spec.use == "first_found")
    )
    runs = apply_filters(runs, spec.filters) if spec else runs
    if runs.empty:
        raise LookupError("no FINISHED trial of the sweep passes the spec's filters")
    names = [p.data.tags["harness.sweep"] for p in parents]
    name = " + ".join(dict.fromkeys(names))
    runs, keys, notes = _rows(runs, spec, sweep, names)
    for parent in parents:
        if (gap := incomplete(client, parent, keys)) is not None:
            notes.insert(0, gap)
            print(f"warning: {gap}", file=sys.stderr)
    extra = {c.removeprefix("metrics."): c for c in spec.metric_columns()} if spec else {}
    primary = primary_metric(runs)  # the tasks' own (harness.primary_metric): mAP, seg_acc, action_top1, top1
    table = aggregate(runs, keys, extra, primary)
    for parent in parents:
        if (other := earlier_invocations(client, parent)) is not None:
            notes.append(other)
    if table.attrs.get("repeated_seeds"):
        notes.append(f"{table.attrs['repeated_seeds']} runs repeated a seed of their row; each seed counts once "
                     "(the mean of its runs), so n is the number of distinct seeds.")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    marker = claim(out, parents, overwrite)
    ids = [(p.info.run_id, p.data.tags.get("harness.sweep_hash", "?")[:12]) for p in parents]
    where = ", ".join(f"`{n}` (parent run `{r}`, sweep hash `{h}`)" for n, (r, h) in zip(names, ids))
    spent = budget(runs)
    note = (f"Sweep {where}: {len(runs)} finished trials, compared by the task's primary metric, test "
            f"{metric_label(primary)} (`{primary}`). {spent} Metrics are "
            "mean ± 95% t-interval over seeds (n distinct seeds per row; n = 1: no interval); GFLOPs = 2 × "
            "multiply-adds of one clip's forward pass; \"audio only\" masks the video at test time and vice versa; "
            "bold: the best of a column.")  # fmt: skip
    title = spec.title if spec and spec.title else f"{name}: method comparison"
    paths = {"csv": out if fmt == "csv" else out.with_suffix(".csv"), "png": out.with_suffix(".png"),
             "svg": out.with_suffix(".svg")}  # fmt: skip
    table.to_csv(paths["csv"], index=False)
    figs = _figures(table, keys, spec, out, name, paths)
    show = spec_table(table, runs, keys, spec) if spec else display_table(table, keys)
    show.attrs["primary"] = primary
    after = "".join(f"Note: {n}\n" for n in notes)
    paired = paired_differences(runs, keys, f"metrics.{primary}")
    pairs = paired_markdown(paired)
    after += ("\n" if after and pairs else "") + pairs
    _write(out, fmt, show, title, note, notes, after, paths, figs, table, paired)
    paths[fmt] = out
    marker.write_text(json.dumps({"sweeps": names, "parent_runs": [p.info.run_id for p in parents],
                                  "sweep_hashes": [h for _, h in ids], "budget": spent}, indent=1) + "\n")  # fmt: skip
    paths["report.json"] = marker
    for parent in parents:
        for p in dict.fromkeys(paths.values()):
            client.log_artifact(parent.info.run_id, str(p), "report")
    return paths


def _spec_figures(table: pd.DataFrame, keys: list[str], spec, out: Path, name: str) -> list[tuple[str, Path, str]]:
    """Draw each of ``spec.figures`` as ``<out stem>_<figure name>.png`` and ``.svg``; (title, PNG, caption) each.

    The caption says what the error bars are and, for a Pareto figure, which rows are on the front.
    """
    drawn = []
    for fig in spec.figures:
        png = out.with_name(f"{out.stem}_{fig.name}.png")
        head = fig.title or f"{fig.y.removeprefix('metrics.')} vs {fig.x.removeprefix('params.')}"
        data = figure_data(table, keys, fig)
        front = spec_figure(data, fig, [png, png.with_suffix(".svg")], f"{name}: {head}")
        caption = "Error bars and bands: 95% t-interval over seeds."
        if data["x"].isna().any():
            caption += " Dashed lines: rows without an x value (reference)."
        if fig.pareto:
            caption += f" Pareto front (lower x, higher y): {', '.join(f'`{f}`' for f in front)}."
        drawn.append((head, png, caption))
    return drawn


def report_file(sweep: str | None, spec: str | None, out: str, fmt: str | None, tracking_uri: str | None,
                overwrite: bool = False) -> int:  # fmt: skip
    """``harness report``; the spec is ``--spec FILE``, else ``OUT`` with the suffix ``.yaml`` if that exists.

    Returns 0, or 1 when there is nothing to report; a bad spec or format raises ``ConfigError`` (exit 2).
    """
    beside = Path(out).with_suffix(".yaml")
    path = Path(spec) if spec else (beside if beside.is_file() else None)
    loaded = load_spec(path) if path else None
    uri = resolve_uri(tracking_uri)
    if (missing := missing_store(uri)) is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    try:
        paths = build_report(uri, sweep, Path(out), fmt, loaded, overwrite)
    except (LookupError, FileExistsError) as e:  # nothing to report, or another report there; a KeyError is a bug
        if isinstance(e, KeyError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0
