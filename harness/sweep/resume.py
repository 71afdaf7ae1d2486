"""``harness sweep FILE --resume``: find the interrupted invocation of a sweep in MLflow, and its Ray Tune state;
how an invocation ends (its runs' statuses, interrupted or with the store down)."""

from __future__ import annotations

import sys

from harness.config import ConfigError, SweepSpec
from harness.run.signals import Interrupted


class SweepInterrupted(Interrupted):
    """The sweep stopped on a signal: ``finished`` trials are done, ``unfinished`` ones wait for ``--resume``."""

    def __init__(self, signum: int, finished: int, unfinished: int):
        self.finished, self.unfinished = finished, unfinished
        super().__init__(signum, f"{finished} finished, {unfinished} unfinished")


class StoreUnavailable(RuntimeError):
    """MLflow kept failing until the sweep ended: ``queued`` writes wait in the journal of Tune's last snapshot."""

    def __init__(self, queued: int, error: BaseException | None, experiment: str):
        self.queued, self.error, self.experiment = queued, error, experiment
        why = f"{type(error).__name__}: {str(error)[:300]}" if error is not None else "no answer"
        super().__init__(f"the MLflow store kept failing ({why}); {queued} writes are kept in the sweep's Ray Tune "
                         f"state ({experiment}) and no trial is lost")  # fmt: skip


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
    """The sweep's child runs by MLflow status: FINISHED, FAILED, KILLED (stopped early), RUNNING; INTERRUPTED
    (KILLED with ``harness.interrupted``: stopped by a signal, ``--resume`` continues them)."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)
    out: dict[str, list] = {"FINISHED": [], "FAILED": [], "KILLED": [], "RUNNING": [], "INTERRUPTED": []}
    for r in runs:
        status = "INTERRUPTED" if r.data.tags.get("harness.interrupted") == "true" else r.info.status
        out.setdefault(status, []).append(r)
    return out


def close_sweep(client, experiment_id: str, parent_run_id: str, interrupted: bool, quiet: bool = False) -> dict:
    """End a sweep invocation in MLflow: with ``interrupted`` its RUNNING child runs and the parent run KILLED with
    ``harness.interrupted=true``, else the parent FINISHED; ``harness.failed_trials`` counted. Returns
    :func:`trial_statuses`. ``quiet``: a store error is printed, not raised (a second signal is stopping at once)."""
    try:
        counts = trial_statuses(client, experiment_id, parent_run_id)
        if interrupted:
            for run in counts["RUNNING"]:
                client.set_tag(run.info.run_id, "harness.interrupted", "true")
                client.set_terminated(run.info.run_id, status="KILLED")
            counts["INTERRUPTED"] += counts["RUNNING"]
            counts["RUNNING"] = []
            client.set_tag(parent_run_id, "harness.interrupted", "true")
        client.set_tag(parent_run_id, "harness.failed_trials", str(len(counts["FAILED"])))
        client.set_terminated(parent_run_id, status="KILLED" if interrupted else "FINISHED")
    except Exception as e:
        if not quiet:
            raise
        print(f"could not mark the sweep's runs KILLED ({type(e).__name__}: {e})", file=sys.stderr)
        counts = {k: [] for k in ("FINISHED", "FAILED", "KILLED", "RUNNING", "INTERRUPTED")}
    return counts
