"""The sweep driver's MLflow writer, the only one of a sweep: a Ray Tune callback that turns trial reports into runs.

Tune holds (and pickles with its experiment) a :class:`MlflowSweepCallback` that knows only the parent run id; each
event goes to the live :class:`SweepLog` of that parent in the driver process, which :func:`attach` registered. A
restored experiment (``harness sweep --resume``) therefore logs through the new driver's log and MLflow client with
Ray's public API only.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ray.tune import Callback

from harness.config import RunSpec, set_dotted
from harness.run.tune_report import START
from harness.sweep.space import describe, scheduler_tags, trial_assignment
from harness.tracking import (
    code_tags,
    error_summary,
    log_failure,
    log_learning_curves,
    log_metrics,
    log_params,
    reopen_run,
    run_history,
    run_params,
)


class BackgroundWriter:
    """One thread that runs MLflow writes in the order they were queued, off Tune's event loop.

    Tune calls its callbacks from the loop that also starts the next trial, so a write that waits on the store
    (a metric batch, the learning-curve figure, a run's end) would delay every later trial. :meth:`drain` waits for
    all queued writes and raises the first one that failed, after the others have run: nothing queued is dropped.
    """

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, fn, *args, **kwargs) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def drain(self) -> None:
        pending, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]  # waits for each
        if errors:
            raise errors[0]


class SweepLog:
    """What the sweep driver writes to MLflow for a sweep, driven by Tune's callback events.

    Opens a child run per trial (params = the trial's flattened resolved config), logs each report as metrics
    at its epoch, and ends the run FINISHED, FAILED with the trial's error, or KILLED with ``harness.stopped_early``
    when the scheduler (ASHA) stopped it. A finished trial's run also gets its learning curves (``curves.png``,
    ``curves.csv``). Prints one line per finished trial.

    A trial restarted after a failure, or after ``--resume``, continues its run: the run is found by the trial's
    ``harness.trial_id`` tag under the parent run, its params are not logged again, and a (metric, step) it already
    holds is not logged twice (a trial replays the epoch after its last checkpoint).

    Writes that nothing waits on (metrics, params, figures, a run's end) go through a :class:`BackgroundWriter`;
    it is drained before each Tune experiment snapshot (``MlflowSweepCallback.get_state``) and before ``run_sweep``
    reads the runs' statuses. A trial's ``done`` line is printed once its run is closed.
    """

    def __init__(self, client, experiment_id: str, parent_run_id: str, spec, base: dict):
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.spec, self.base = spec, base
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.settled: set[str] = set()  # trials whose run had FINISHED before the driver was restarted
        self.logged: dict[str, set[tuple[str, int]]] = {}  # trial id -> (metric, step) its run holds
        self.finished, self.failed, self.last = 0, [], {}
        self.history: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> step -> metrics (a retry overwrites)
        self.t0: dict[str, float] = {}
        self.writer = BackgroundWriter()

    def drain(self) -> None:
        """Wait for every queued MLflow write; raises the first that failed."""
        self.writer.drain()

    def _label(self, trial) -> str:
        return describe(trial.config, self.spec)

    def _existing_run(self, trial_id: str) -> str | None:
        """The child run of ``trial_id`` under this parent, from before the driver was restarted."""
        found = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                                        f"and tags.`harness.trial_id` = '{trial_id}'")  # fmt: skip
        return found[0].info.run_id if found else None

    def on_trial_start(self, trial) -> None:
        tid = trial.trial_id
        self.t0[tid] = time.time()
        if tid in self.runs:  # a retry continues its run
            return
        if (run_id := self._existing_run(tid)) is not None:  # a resumed sweep: the trial's run from before
            self.runs[tid], self.history[tid] = run_id, run_history(self.client, run_id)
            self.logged[tid] = {(k, step) for step, m in self.history[tid].items() for k in m}
            if self.client.get_run(run_id).info.status == "FINISHED":
                # It finished after Tune last saved its experiment state (every 10 s or more): Tune restarts it, it
                # reports its final checkpoint again without training, and its run is left as it was.
                self.settled.add(tid)
                print(f"  ({self._label(trial)} had finished before the driver stopped)", flush=True)
                return
            reopen_run(self.client, run_id)
            print(f"  resume {self._label(trial)} (MLflow run {run_id})", flush=True)
            return
        d = json.loads(trial.config["__base__"])
        for key, value in trial_assignment(trial.config).items():
            set_dotted(d, key, value)
        tags = {**code_tags(), **scheduler_tags(self.spec), "mlflow.parentRunId": self.parent_run_id,
                "harness.sweep": self.spec.name, "harness.sweep_hash": self.spec.source_hash,
                "harness.trial_id": tid, "mlflow.runName": f"{self.spec.name}-{tid}"}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.runs[tid], self.logged[tid] = run.info.run_id, set()
        # At once: a resumed sweep finds this run by its tag and does not log its params again.
        log_params(self.client, run.info.run_id, run_params(RunSpec.from_dict(d).to_dict()))

    def on_trial_recover(self, trial) -> None:
        print(f"  retry {self._label(trial)}: the trial failed; Tune restarts it from its last checkpoint", flush=True)

    def on_trial_result(self, trial, result: dict) -> None:
        run_id = self.runs[trial.trial_id]
        if START in result:
            for key, value in json.loads(result[START]).items():
                self.writer.submit(self.client.set_tag, run_id, key, value)
        metrics = {k: v for k, v in result.items() if "/" in k and not k.startswith("config")}
        metrics.update({k: result[k] for k in ("epoch", "lr") if k in result})
        step = int(result.get("harness_step", 0))
        self.writer.submit(log_metrics, self.client, run_id, metrics, step=step, logged=self.logged[trial.trial_id])
        self.last[trial.trial_id] = {**self.last.get(trial.trial_id, {}), **metrics}
        steps = self.history.setdefault(trial.trial_id, {})
        steps[step] = {**steps.get(step, {}), **metrics}

    def on_trial_complete(self, trial) -> None:
        if trial.trial_id in self.settled:
            return
        run_id, m = self.runs[trial.trial_id], self.last.get(trial.trial_id, {})
        history, label, seconds = dict(self.history.get(trial.trial_id, {})), self._label(trial), time.time()
        seconds -= self.t0[trial.trial_id]
        stopped = not any(k.startswith("test/") for k in m)  # ended before its final test: the scheduler stopped it
        checkpoint = trial.checkpoint.path if getattr(trial, "checkpoint", None) is not None else None
        if not stopped:
            self.finished += 1

        def finish() -> None:  # in the writer, after the trial's metrics; its line is printed once the run is closed
            log_learning_curves(self.client, run_id, history)
            if stopped:
                self.client.set_tag(run_id, "harness.stopped_early", "true")
                self.client.set_terminated(run_id, status="KILLED")
                print(f"  stop  {label}: stopped early at epoch {int(m.get('epoch', -1)) + 1}", flush=True)
                return
            if checkpoint is not None:  # the trial's last Tune checkpoint: what `harness eval RUN_ID` scores
                self.client.set_tag(run_id, "harness.checkpoint", checkpoint)
            self.client.set_terminated(run_id, status="FINISHED")
            shown = " ".join(f"{k}={m[k]:.1f}" for k in ("test/top1", "test/top1:audio_only", "test/top1:video_only")
                             if k in m)  # fmt: skip
            print(f"  done  {label}: {shown} ({seconds:.0f} s)", flush=True)

        self.writer.submit(finish)

    def on_trial_error(self, trial) -> None:
        # The error file is local to the driver right away; get_error() reads storage, which may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.exists() else trial.get_error()) or "unknown error (Ray logs)"
        self.writer.submit(log_failure, self.client, self.runs[trial.trial_id], text)
        first = error_summary(text)
        self.failed.append(f"{self._label(trial)}: {first}")
        print(f"  FAIL  {self._label(trial)}: {first}", flush=True)


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

    def get_state(self) -> None:
        """Called by Tune right before it snapshots the experiment (what ``--resume`` restores): the queued writes
        land first, so a trial the snapshot holds as finished, or checkpointed at epoch k, has its MLflow run closed,
        or its metrics up to epoch k, even if the driver dies right after. The callback keeps no Tune state."""
        self.log.drain()
        return None

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
