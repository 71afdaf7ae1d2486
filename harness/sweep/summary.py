"""The sweep's summary on its parent run: the best configuration of each method, what the MLflow UI shows first.

After a sweep the parent run holds, per method, the best row over its swept options (mean over seeds of the task's
primary metric): metrics ``<method>/<primary>`` (``mbt/test/top1``), ``<method>/gflops``,
``<method>/params_trainable`` and ``<method>/n`` (seeds), a param ``best.<method>`` naming that row
(``Lf2-Nb4``), the table as ``summary.json`` (``MlflowClient.log_table``) and as the run's description (Markdown,
``mlflow.note.content``). So the parent run's page answers "which method is best at what GFLOPs" without choosing
columns. ``harness report`` remains the place for intervals and paired differences.
"""

from __future__ import annotations

import math
from collections import defaultdict

from harness.sweep.space import SHORT, varying_keys


def _label(params: dict, keys: list[str]) -> str:
    return "-".join(f"{SHORT[k]}{params[k]}" if k in SHORT else f"{k.rsplit('.', 1)[-1]}={params[k]}"
                    for k in keys if k in params) or "—"  # fmt: skip


def summary_rows(runs: list, keys: list[str], primary: str) -> list[dict]:
    """The best row of each method among FINISHED ``runs`` (MLflow ``Run`` objects), best method first; a row is the
    runs that agree on ``keys`` (the swept keys but the seed), a seed counted once."""
    rows: dict[tuple, dict] = {}
    by_row: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        p, m = r.data.params, r.data.metrics
        if primary not in m:
            continue
        row = (p.get("method.name", "?"), _label(p, [k for k in keys if k != "method.name"]))
        by_row[row][p.get("seed", r.info.run_id)].append(m[primary])
        rows.setdefault(row, {"gflops": m.get("model/gflops"), "params_trainable": m.get("model/params_trainable")})
    best: dict[str, dict] = {}
    for (method, label), seeds in by_row.items():
        values = [sum(v) / len(v) for v in seeds.values()]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
        row = {"method": method, "row": label, "mean": mean, "std": std, "n": len(values), **rows[(method, label)]}
        if method not in best or mean > best[method]["mean"]:
            best[method] = row
    return sorted(best.values(), key=lambda r: -r["mean"])


def markdown(rows: list[dict], primary: str, name: str) -> str:
    """The summary as the parent run's description."""
    metric = primary.removeprefix("test/")
    lines = [f"**{name}**: the best row of each method (mean ± std over seeds of `{primary}`; "
             "`harness report` for 95% intervals and paired differences)", "",
             f"| method | row | test {metric} | n | GFLOPs | trainable params |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        std = "" if math.isnan(r["std"]) else f" ± {r['std']:.1f}"
        gflops = "—" if r["gflops"] is None else f"{r['gflops']:.4f}"
        params = "—" if r["params_trainable"] is None else f"{r['params_trainable'] / 1e6:.3f} M"
        lines.append(f"| {r['method']} | {r['row']} | {r['mean']:.1f}{std} | {r['n']} | {gflops} | {params} |")
    return "\n".join(lines) + "\n"


def log_summary(client, experiment_id: str, parent_run_id: str, spec) -> list[dict]:
    """Write the summary of the parent run's FINISHED children to it (see the module docstring); returns its rows."""
    import pandas as pd
    from mlflow.entities import Metric, Param

    from harness.tracking import log_metrics

    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                              "attributes.status = 'FINISHED'", max_results=50000)  # fmt: skip
    if not runs:
        return []
    primary = runs[0].data.tags.get("harness.primary_metric", "test/top1")
    rows = summary_rows(runs, [k for k in varying_keys(spec) if k != "seed"], primary)
    metrics = {}
    for r in rows:
        metrics[f"{r['method']}/{primary}"] = r["mean"]
        metrics[f"{r['method']}/n"] = r["n"]
        for cost in ("gflops", "params_trainable"):
            if r[cost] is not None:
                metrics[f"{r['method']}/{cost}"] = r[cost]
    log_metrics(client, parent_run_id, metrics, step=0)
    have = client.get_run(parent_run_id).data.params
    params = [Param(f"best.{r['method']}", r["row"]) for r in rows if f"best.{r['method']}" not in have]
    if params:  # params are written once; a resumed sweep's new best is in the metrics, the table and the note
        client.log_batch(parent_run_id, params=params, metrics=[Metric("trials_finished", len(runs), 0, 0)])
    client.log_table(parent_run_id, pd.DataFrame(rows), "summary.json")
    client.set_tag(parent_run_id, "mlflow.note.content", markdown(rows, primary, spec.name))
    return rows
