"""The sweep driver's MLflow writer, the only one of a sweep: a Ray Tune callback that turns trial reports into runs.

Tune holds (and pickles with its experiment) a :class:`MlflowSweepCallback` that knows only the parent run id; each
event goes to the live :class:`SweepLog` of that parent in the driver process, which :func:`attach` registered. A
restored experiment (``harness sweep --resume``) therefore logs through the new driver's log and MLflow client with
Ray's public API only.

The journal: every write is an op of ``harness.sweep.writer`` keyed by the Tune trial id (a trial's MLflow run is
found or created by the first op that needs it), and Tune's experiment snapshot holds the ops not yet written
(``get_state``) beside the trials' checkpoints. When MLflow fails (a full disk, a server down), the trials go on,
the writes wait and are retried, and a snapshot taken meanwhile keeps them; ``--resume`` writes them first
(``set_state``). What the snapshot says has happened is in MLflow or in the snapshot's journal, so a restored
trial never lacks the epochs it continues from, and Tune's retention of one checkpoint per trial never deletes
the checkpoint a saved snapshot names (snapshots do not stop while the store is down).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray.tune import Callback

from harness.config import RunSpec, set_dotted
from harness.run.tune_report import START
from harness.sweep.space import describe, run_name, scheduler_tags, trial_assignment
from harness.sweep.writer import StoreWriter
from harness.tracking import (
    code_tags,
    error_summary,
    log_dataset,
    log_failure,
    log_learning_curves,
    log_metrics,
    log_params,
    reopen_run,
    run_history,
    run_params,
)


def store_patience() -> float:
    """Seconds a snapshot waits on a failing MLflow write before it keeps the queue instead
    (``$HARNESS_STORE_PATIENCE_S``, default 20)."""
    return float(os.environ.get("HARNESS_STORE_PATIENCE_S", "20"))


class SweepLog:
    """What the sweep driver writes to MLflow for a sweep, driven by Tune's callback events.

    Opens a child run per trial (params = the trial's flattened resolved config), logs each report as metrics
    at its epoch, and ends the run FINISHED, FAILED with the trial's error, or KILLED with ``harness.stopped_early``
    when the scheduler (ASHA) stopped it. A finished trial's run also gets its learning curves (``curves.png``,
    ``curves.csv``). Prints one line per finished trial, once its run is closed.

    A trial restarted after a failure, or after ``--resume``, continues its run: the run is found by the trial's
    ``harness.trial_id`` tag under the parent run, its params are not logged again, and a (metric, step) it already
    holds is not logged twice (a trial replays the epoch after its last checkpoint).

    Every write goes through a :class:`~harness.sweep.writer.StoreWriter`: :meth:`drain` waits for it before each
    Tune experiment snapshot (``MlflowSweepCallback.get_state``) and before ``run_sweep`` reads the runs' statuses.
    """

    def __init__(self, client, experiment_id: str, parent_run_id: str, spec, base: dict):
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.spec, self.base = spec, base
        self.finished, self.failed, self.last = 0, [], {}
        self.history: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> step -> metrics (a retry overwrites)
        self.t0: dict[str, float] = {}
        self.writer = StoreWriter(self._apply)
        # Read and written by the writer's thread only (and by the driver once drained):
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.opened: set[str] = set()  # trials whose run was opened by this driver
        self.created: set[str] = set()  # trials whose run this driver created
        self.settled: set[str] = set()  # trials whose run had FINISHED before the driver was restarted
        self.logged: dict[str, set[tuple[str, int]]] = {}  # trial id -> (metric, step) its run holds
        self.stored: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> what its run held when found
        self.dataset_name = str((base.get("dataset") or {}).get("name", "dataset"))  # mlflow.log_input's name
        self.total, self.ended, self.began = spec.num_trials, 0, time.time()  # the `k/N done, ETA` of each line

    def progress(self) -> str:
        """``3/15 done, ETA 4m10s``: trials ended in this invocation against those it runs (``total``)."""
        k = min(self.ended, self.total)
        if not k or k >= self.total:
            return f"{k}/{self.total} done"
        left = (time.time() - self.began) / k * (self.total - k)
        return f"{k}/{self.total} done, ETA {int(left // 60)}m{int(left % 60):02d}s"

    def drain(self, timeout: float | None = None) -> list[tuple]:
        """Wait for the queued MLflow writes; returns those still queued when the store has failed for
        :func:`store_patience` seconds (or after ``timeout``), ``[]`` when all landed."""
        return self.writer.drain(store_patience(), timeout)

    def replay(self, journal: list[tuple]) -> None:
        """Queue the writes a saved snapshot kept (``--resume``), ahead of the new ones."""
        if journal:
            print(f"  writing {len(journal)} MLflow writes kept by the interrupted sweep", flush=True)
            self.writer.resubmit([tuple(op) for op in journal])

    def _label(self, trial) -> str:
        return describe(trial.config, self.spec)

    # -- Tune's events (Tune's thread): queue ops --------------------------------------------------------------------

    def on_trial_start(self, trial) -> None:
        tid = trial.trial_id
        self.t0[tid] = time.time()
        d = json.loads(trial.config["__base__"])
        for key, value in trial_assignment(trial.config).items():
            set_dotted(d, key, value)
        tags = {**code_tags(), **scheduler_tags(self.spec), "mlflow.parentRunId": self.parent_run_id,
                "harness.sweep": self.spec.name, "harness.sweep_hash": self.spec.source_hash,
                "harness.trial_id": tid, "mlflow.runName": run_name(trial.config, self.spec)}  # fmt: skip
        self.writer.submit(("open", tid, tags, run_params(RunSpec.from_dict(d).to_dict()), self._label(trial)))

    def on_trial_recover(self, trial) -> None:
        print(f"  retry {self._label(trial)}: the trial failed; Tune restarts it from its last checkpoint", flush=True)

    def on_trial_result(self, trial, result: dict) -> None:
        tid = trial.trial_id
        if START in result:
            self.writer.submit(("tags", tid, json.loads(result[START])))
        metrics = {k: v for k, v in result.items() if "/" in k and not k.startswith("config")}
        metrics.update({k: result[k] for k in ("epoch", "lr") if k in result})
        step = int(result.get("harness_step", 0))
        self.writer.submit(("metrics", tid, metrics, step))
        self.last[tid] = {**self.last.get(tid, {}), **metrics}
        steps = self.history.setdefault(tid, {})
        steps[step] = {**steps.get(step, {}), **metrics}

    def on_trial_complete(self, trial) -> None:
        tid = trial.trial_id
        seconds = time.time() - self.t0.get(tid, time.time())
        m = self.last.get(tid, {})
        self.ended += 1
        stopped = not any(k.startswith("test/") for k in m)  # ended before its final test: the scheduler stopped it
        checkpoint = trial.checkpoint.path if getattr(trial, "checkpoint", None) is not None else None
        self.writer.submit(
            ("finish", tid, dict(self.history.get(tid, {})), m, stopped, self._label(trial), seconds, checkpoint)
        )

    def on_trial_error(self, trial) -> None:
        # The error file is local to the driver right away; get_error() reads storage, which may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.exists() else trial.get_error()) or "unknown error (Ray logs)"
        self.writer.submit(("failure", trial.trial_id, text))
        first = error_summary(text)
        self.failed.append(f"{self._label(trial)}: {first}")
        self.ended += 1
        if os.environ.get("HARNESS_VERBOSE") == "1":  # harness sweep --verbose: the whole traceback too
            print(text.rstrip(), flush=True)
        print(f"  FAIL  {self._label(trial)}: {first} (traceback: error.txt of its run) [{self.progress()}]",
              flush=True)  # fmt: skip

    # -- the writes (the writer's thread); each may run twice after a restart, to the same effect -----------------

    def _apply(self, op: tuple) -> None:
        getattr(self, f"_op_{op[0]}")(*op[1:])

    def _existing_run(self, trial_id: str) -> str | None:
        """The child run of ``trial_id`` under this parent, from before the driver was restarted."""
        found = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                                        f"and tags.`harness.trial_id` = '{trial_id}'")  # fmt: skip
        return found[0].info.run_id if found else None

    def _found(self, tid: str, run_id: str) -> None:
        self.runs[tid], self.stored[tid] = run_id, run_history(self.client, run_id)
        self.logged[tid] = {(k, step) for step, m in self.stored[tid].items() for k in m}

    def _run_of(self, tid: str) -> str:
        """The run of ``tid``: known, or found by its tag (an op replayed from a journal after a restart)."""
        if tid not in self.runs:
            run_id = self._existing_run(tid)
            if run_id is None:
                raise LookupError(f"no MLflow run of trial {tid} under parent run {self.parent_run_id}")
            self._found(tid, run_id)
            if self.client.get_run(run_id).info.status == "FINISHED":
                self.settled.add(tid)
        return self.runs[tid]

    def _op_open(self, tid: str, tags: dict, params: dict, label: str) -> None:
        if tid in self.opened:  # a retry continues its run
            return
        run_id = self.runs.get(tid) or self._existing_run(tid)
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.runs[tid], self.logged[tid], self.stored[tid] = run_id, set(), {}
            self.created.add(tid)
        elif tid not in self.runs:
            self._found(tid, run_id)
        run = self.client.get_run(run_id)
        if not run.data.params:  # at once: a resumed sweep finds this run by its tag and does not log them again
            log_params(self.client, run_id, params)
        if tid not in self.created:
            if run.info.status == "FINISHED":
                # It finished after Tune last saved its experiment state (every 10 s or more): Tune restarts it, it
                # reports its final checkpoint again without training, and its run is left as it was.
                self.settled.add(tid)
                print(f"  ({label} had finished before the driver stopped)", flush=True)
            else:
                reopen_run(self.client, run_id)
                print(f"  resume {label} (MLflow run {run_id})", flush=True)
        self.opened.add(tid)

    def _op_tags(self, tid: str, tags: dict) -> None:
        run_id = self._run_of(tid)
        if tid not in self.settled:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
            log_dataset(self.client, run_id, tags, self.dataset_name)

    def _op_metrics(self, tid: str, metrics: dict, step: int) -> None:
        run_id = self._run_of(tid)
        if tid not in self.settled:
            log_metrics(self.client, run_id, metrics, step=step, logged=self.logged[tid])

    def _op_finish(
        self, tid: str, history: dict, m: dict, stopped: bool, label: str, seconds: float, checkpoint: str | None = None
    ) -> None:
        run_id = self._run_of(tid)
        if tid in self.settled:
            return
        merged = {**self.stored.get(tid, {})}
        for step, metrics in history.items():
            merged[int(step)] = {**merged.get(int(step), {}), **metrics}
        log_learning_curves(self.client, run_id, merged)
        if stopped:
            self.client.set_tag(run_id, "harness.stopped_early", "true")
            self.client.set_terminated(run_id, status="KILLED")
            print(f"  stop  {label}: stopped early at epoch {int(m.get('epoch', -1)) + 1} [{self.progress()}]",
                  flush=True)  # fmt: skip
            return
        if checkpoint is not None:  # the trial's last Tune checkpoint: what `harness eval RUN_ID` scores
            self.client.set_tag(run_id, "harness.checkpoint", checkpoint)
        self.client.set_terminated(run_id, status="FINISHED")
        self.finished += 1
        shown = " ".join(f"{k}={m[k]:.1f}" for k in ("test/top1", "test/top1:audio_only", "test/top1:video_only")
                         if k in m)  # fmt: skip
        print(f"  done  {label}: {shown} ({seconds:.0f} s) [{self.progress()}]", flush=True)

    def _op_failure(self, tid: str, text: str) -> None:
        log_failure(self.client, self._run_of(tid), text)


_LIVE: dict[str, SweepLog] = {}  # parent run id -> the driver's log of that sweep invocation


def attach(log: SweepLog) -> MlflowSweepCallback:
    """Register ``log`` as the live log of its parent run and return the Tune callback that drives it."""
    _LIVE[log.parent_run_id] = log
    return MlflowSweepCallback(log.parent_run_id)


def detach(log: SweepLog) -> None:
    """Forget ``log`` (the sweep invocation has ended)."""
    _LIVE.pop(log.parent_run_id, None)


class MlflowSweepCallback(Callback):
    """The Ray Tune callback of a sweep: forwards every event to the live :class:`SweepLog` of its parent run.

    It holds nothing but the parent run id, so the copy Tune pickles with the experiment (and gives back on
    ``Tuner.restore``) reaches the log of whichever driver runs the sweep now.
    """

    def __init__(self, parent_run_id: str):
        self.parent_run_id = parent_run_id

    @property
    def log(self) -> SweepLog:
        try:
            return _LIVE[self.parent_run_id]
        except KeyError:
            raise RuntimeError(f"no live sweep log for parent run {self.parent_run_id}; harness.sweep.driver.run_sweep "
                               "attaches one before Tune starts") from None  # fmt: skip

    def get_state(self) -> dict:
        """Called by Tune right before it snapshots the experiment (what ``--resume`` restores): the queued writes
        land first, so a trial the snapshot holds as finished, or checkpointed at epoch k, has its MLflow run closed,
        or its metrics up to epoch k, even if the driver dies right after. When the store has been failing for
        :func:`store_patience` seconds, the writes still queued are the state instead (the journal), written by
        :meth:`set_state` on ``--resume``. Always a non-empty dict, so that each snapshot replaces the last one's."""
        return {"journal": self.log.drain()}

    def set_state(self, state: dict) -> None:
        self.log.replay(state.get("journal") or [])

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log.on_trial_start(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.log.on_trial_recover(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.log.on_trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.log.on_trial_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log.on_trial_error(trial)
