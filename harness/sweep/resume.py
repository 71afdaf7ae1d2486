"""``harness sweep FILE --resume``: find the interrupted invocation of a sweep in MLflow, and its Ray Tune state."""

from __future__ import annotations

from harness.config import ConfigError, SweepSpec


def interrupted_sweep(client, experiment_id: str, spec: SweepSpec):
    """The latest parent run of ``spec`` (same name and hash) and its Ray Tune experiment path, for ``--resume``.

    Raises:
        ConfigError: no such run, the sweep file changed since, or its Tune state is gone.
    """
    from ray import tune

    name = spec.name.replace("'", "\\'")
    runs = client.search_runs([experiment_id], f"tags.`harness.sweep` = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=200)  # fmt: skip
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise ConfigError([("--resume", f"no earlier run of sweep '{spec.name}' in this MLflow store; start it "
                                        "without --resume (or pass the --tracking-uri it used)")])  # fmt: skip
    same = [r for r in parents if r.data.tags.get("harness.sweep_hash") == spec.source_hash]
    if not same:
        old = parents[0].data.tags.get("harness.sweep_hash", "?")
        raise ConfigError([("--resume", f"sweep '{spec.name}' changed since it last ran (hash {old[:12]}, now "
                                        f"{spec.source_hash[:12]}): resume with the same file and --set overrides, "
                                        "or start afresh without --resume")])  # fmt: skip
    parent = same[0]
    path = parent.data.tags.get("harness.ray_experiment")
    if not path or not tune.Tuner.can_restore(path):
        raise ConfigError([("--resume", f"the Ray Tune state of sweep '{spec.name}' (parent run {parent.info.run_id}) "
                                        f"is not at {path}: was that folder moved or deleted?")])  # fmt: skip
    return parent, path


def trial_statuses(client, experiment_id: str, parent_run_id: str) -> dict[str, list]:
    """The sweep's child runs by MLflow status (FINISHED, FAILED, KILLED = stopped early, RUNNING)."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)
    out: dict[str, list] = {"FINISHED": [], "FAILED": [], "KILLED": [], "RUNNING": []}
    for r in runs:
        out.setdefault(r.info.status, []).append(r)
    return out
