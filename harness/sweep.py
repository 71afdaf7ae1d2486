"""Sweeps: a sweep YAML -> Ray Tune ``param_space`` -> one ``run_trial`` per trial, logged to MLflow by the driver.

The driver validates everything first (``load_config``), generates each dataset once, opens the MLflow experiment
and the sweep's parent run, then runs a Tune function trainable per trial. Trials report to Tune only
(``TuneReporter``); ``MlflowSweepCallback`` in the driver writes the child runs, so MLflow has a single writer.
A failed trial is recorded FAILED with its error and the sweep goes on; the command exits 1 if any failed.

Surviving failures: every epoch's report carries the trial's checkpoint (``tune.report(..., checkpoint=...)``), so
a trial that dies is restarted from its last epoch ``tune.max_failures`` times, in the same MLflow run. After the
driver itself died, ``harness sweep FILE --resume`` restores the Tune experiment named in the parent run's
``harness.ray_experiment`` tag (``Tuner.restore``): finished trials are not run again, the others continue from their
checkpoints, each in the child run that carries its ``harness.trial_id``, under the same parent run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Ray Tune's newer console output prints a configuration box and TensorBoard hints; the harness prints one line
# per finished trial instead. Set before Ray reads it.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from ray.tune import Callback  # noqa: E402

from harness.config import RunSpec, load_config, set_dotted  # noqa: E402
from harness.search import SweepSpec  # noqa: E402
from harness.tracking import (  # noqa: E402
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

_START = "harness_start"  # the first report of a trial carries the trial's tags as JSON under this key


def start_report(info: dict) -> dict:
    """The first report of a trial: the cost metrics, and the tags as JSON under ``harness_start``."""
    return {**info["metrics"], _START: json.dumps(info["tags"]), "harness_step": 0}


def step_report(metrics: dict[str, float], step: int) -> dict:
    """A report of the figures of ``step`` (an epoch, or ``train.epochs`` for the final ones).

    An epoch's report also counts the epochs trained so far as ``harness_epochs`` (ASHA's time axis).
    """
    return {**metrics, "harness_step": step, **({"harness_epochs": metrics["epoch"] + 1} if "epoch" in metrics else {})}


def from_report(report: dict, reporter) -> None:
    """Pass a report shaped by :func:`start_report` or :func:`step_report` on to a trial reporter."""
    if _START in report:
        metrics = {k: v for k, v in report.items() if k not in (_START, "harness_step")}
        reporter.start({"tags": json.loads(report[_START]), "metrics": metrics})
    elif report:
        reporter.report({k: v for k, v in report.items() if k != "harness_step"}, int(report["harness_step"]))


class TuneReporter:
    """A trial's reporter inside a Ray Tune worker: every figure goes to ``ray.tune.report``; also its checkpoints.

    The cost and tags are reported at once, before training, so that a trial that fails in its first epoch still
    leaves them in its MLflow run. A report with a training state carries it as a Tune checkpoint (``state.pt``,
    ``torch.save``), which Tune keeps in the trial's folder of the experiment's storage; :meth:`restore` reads the
    latest back (``weights_only=True``) when Tune restarts the trial.

    Args:
        storage: the Tune experiment's path, where engines with checkpoints of their own keep them (deepspeed).
    """

    def __init__(self, storage: str | None = None):
        self.storage = storage

    def start(self, info: dict) -> None:
        from ray import tune

        tune.report(start_report(info))

    def report(self, metrics: dict[str, float], step: int, state: dict | None = None) -> None:
        import torch
        from ray import tune

        if state is None:
            return tune.report(step_report(metrics, step))
        with tempfile.TemporaryDirectory(prefix="harness-checkpoint-") as folder:
            torch.save(state, Path(folder) / "state.pt")
            tune.report(step_report(metrics, step), checkpoint=tune.Checkpoint.from_directory(folder))

    def restore(self) -> dict | None:
        import torch
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)


def trial_assignment(config: dict) -> dict:
    """The flat dotted assignment of one Tune trial: its sampled axes plus its variant."""
    return {**{k: v for k, v in config.items() if not k.startswith("__")}, **config.get("__variant__", {})}


def trainable(config: dict) -> None:
    """The Tune function trainable: rebuild the trial's spec from the base and its assignment, then run it."""
    from harness.trial import run_trial

    d = json.loads(config["__base__"])
    for key, value in trial_assignment(config).items():
        set_dotted(d, key, value)
    run_trial(RunSpec.from_dict(d), TuneReporter(config.get("__storage__")))


def param_space(spec: SweepSpec, base: dict, storage: str | None = None) -> dict:
    """Ray Tune's search space: one flat key per axis, the variants as one grid axis, the base (and the
    experiment's storage path) as constants."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice}
    space: dict = {"__base__": json.dumps(base), "__storage__": storage}
    for key, d in spec.axes.items():
        space[key] = make[d.kind](list(d.values)) if d.values is not None else getattr(tune, d.kind)(*d.bounds)
    space["__variant__"] = tune.grid_search(spec.variants) if len(spec.variants) > 1 else spec.variants[0]
    return space


def first_values(spec: SweepSpec) -> dict:
    """Each axis at its first value: with a variant, the assignment that stands for a sweep's whole setup."""
    return {k: d.probe_values()[0] for k, d in spec.axes.items()}


def first_trial(spec: SweepSpec) -> RunSpec:
    """The resolved first trial: where the sweep's data lives, which engine it runs."""
    return spec.resolve(first_values(spec) | spec.variants[0])


def prepare_datasets(spec: SweepSpec) -> None:
    """Generate or load every distinct dataset of the sweep once, before trials start (no races, no repeats)."""
    from harness.registry import FORMATS
    from harness.trial import cache_dir

    seen = set()
    first = first_values(spec)
    for variant in spec.variants:
        run = spec.resolve({**first, **variant})
        key = (run.dataset.format, run.dataset.params.model_dump_json(), str(cache_dir(run)))
        if key in seen:
            continue
        seen.add(key)
        loader = FORMATS.get(run.dataset.format)
        if hasattr(loader, "prepare"):
            print(f"preparing dataset {run.dataset.name} ...", flush=True)
            loader.prepare(run.dataset.params, cache_dir(run))


def _describe(config: dict, spec: SweepSpec) -> str:
    """Short trial label from its swept values: ``method.name=mbt method.fusion_layer=1 seed=0``."""
    a = trial_assignment(config)
    return " ".join(f"{k}={a[k]}" for k in [*spec.variants[0], *spec.axes] if k in a) or "trial"


def run_sweep(spec: SweepSpec, tracking: str | None = None, storage: str | None = None,
              address: str | None = None, resume: bool = False) -> int:  # fmt: skip
    """Run every trial of ``spec``, or with ``resume`` the unfinished ones of its interrupted invocation; returns the
    number of failed trials."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from harness.tracking import _experiment_id, tracking_uri
    from harness.trial import cache_dir

    uri = tracking_uri(tracking or spec.base.get("tracking", {}).get("uri"))
    base = dict(spec.base)
    base["cache_dir"] = str(cache_dir(first_trial(spec)).resolve())
    start_ray(address)
    try:
        prepare_datasets(spec)
        client = MlflowClient(uri)
        experiment = base.get("tracking", {}).get("experiment") or spec.name
        exp_id = _experiment_id(client, experiment)
        if resume:
            parent, path = interrupted_sweep(client, exp_id, spec)
            parent_id = parent.info.run_id
            client.update_run(parent_id, status="RUNNING")
            client.set_tag(parent_id, "harness.resumed", str(int(parent.data.tags.get("harness.resumed", "0")) + 1))
        else:
            name = f"{spec.name}-{spec.source_hash[:8]}-{int(time.time())}"
            path = str(Path(storage or Path.cwd() / ".harness" / "ray").resolve() / name)
            tags = {**code_tags(), **scheduler_tags(spec), "harness.sweep": spec.name,
                    "harness.sweep_hash": spec.source_hash, "harness.ray_experiment": path}  # fmt: skip
            parent_id = client.create_run(exp_id, tags={**tags, "mlflow.runName": spec.name}).info.run_id
            client.log_text(parent_id, spec.source, "sweep.yaml")
    except BaseException:  # nothing has started: no run to close, only the Ray that start_ray began
        ray.shutdown()
        raise
    callback = MlflowSweepCallback(client, exp_id, parent_id, spec, base)

    res = spec.tune.resources
    if spec.base.get("train", {}).get("threads") is None:  # one intra-op thread per CPU the trial holds
        base.setdefault("train", {})["threads"] = max(1, int(res.cpu))
    # A distributed engine's trial process only waits on its Ray Train workers: tune.resources are per worker,
    # and the trial holds a token amount of memory (Ray refuses a request for nothing).
    workers = _distributed_workers(spec)
    held = {"cpu": 0, "gpu": 0, "memory": 2**20} if workers else {"cpu": res.cpu, "gpu": res.gpu}
    gpu = max(res.gpu, float(ray.cluster_resources().get("GPU", 0) > 0)) if workers else res.gpu
    concurrent = spec.tune.max_concurrent_trials or _max_concurrent(ray.cluster_resources(), res.cpu * max(1, workers),
                                                                    gpu * max(1, workers))  # fmt: skip
    what = "resuming its unfinished trials" if resume else f"{spec.num_trials} trials"
    print(f"sweep '{spec.name}': {what}, {concurrent} at a time; MLflow {uri} "
          f"(experiment '{experiment}', parent run {parent_id}); Ray Tune state in {path}", flush=True)  # fmt: skip
    if spec.tune.scheduler == "asha":  # the reports before epoch 0 and of the final test have no val/*: ASHA skips them
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if resume:
        # Errored trials continue from their checkpoints too: a lost node is worth a retry; a NaN fails fast again.
        tuner = tune.Tuner.restore(path, tune.with_resources(trainable, held), resume_unfinished=True,
                                   resume_errored=True)  # fmt: skip
        _use_callback(tuner, callback)
    else:
        tuner = tune.Tuner(
            tune.with_resources(trainable, held),
            param_space=param_space(spec, base, path),
            tune_config=tune.TuneConfig(
                num_samples=spec.tune.num_samples,
                max_concurrent_trials=concurrent,
                reuse_actors=spec.tune.reuse_actors and not workers,
                **scheduler_options(spec),
            ),
            run_config=tune.RunConfig(
                name=Path(path).name,
                storage_path=str(Path(path).parent),
                failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[callback],
                verbose=0,
            ),
        )
    status = "FINISHED"
    try:
        tuner.fit()
    except BaseException:
        status = "KILLED"  # interrupted: `--resume` continues it
        raise
    finally:
        try:
            callback.drain()  # every queued write lands before the statuses are read (raises the first that failed)
        finally:
            counts = trial_statuses(client, exp_id, parent_id)
            client.set_tag(parent_id, "harness.failed_trials", str(len(counts["FAILED"])))
            client.set_terminated(parent_id, status=status)
            ray.shutdown()
    failed = [f"{_run_label(r, spec)}: {r.data.tags.get('harness.error', '?')}" for r in counts["FAILED"]]
    stopped = f", {len(counts['KILLED'])} stopped early" if counts["KILLED"] else ""
    print(f"sweep '{spec.name}' done: {len(counts['FINISHED'])} finished ({callback.finished} in this run){stopped}, "
          f"{len(failed)} failed", flush=True)  # fmt: skip
    if failed:
        print("failed trials: " + "; ".join(failed), file=sys.stderr)
    return len(failed)


def start_ray(address: str | None) -> None:
    """``ray.init`` for a sweep: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local one on all cores."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # With one checkpoint kept per trial, Tune snapshots the experiment after each (what --resume needs) and warns.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # HARNESS_FAULT_INJECT (a test hook, harness/engines/torch_engine.py) reaches trials on any node this way
    env = {k: os.environ[k] for k in ("HARNESS_FAULT_INJECT",) if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)


def interrupted_sweep(client, experiment_id: str, spec: SweepSpec):
    """The latest parent run of ``spec`` (same name and hash) and its Ray Tune experiment path, for ``--resume``.

    Raises:
        ConfigError: no such run, the sweep file changed since, or its Tune state is gone.
    """
    from ray import tune

    from harness.config import ConfigError

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


def _use_callback(tuner, callback) -> None:
    """Make a restored ``tuner`` log through ``callback``.

    ``Tuner.restore`` brings back the ``RunConfig`` pickled when the sweep started, callbacks included; this run's
    callback (its tracking URI, its MLflow client) replaces the old one. Ray has no public setter for it.
    """
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "get_run_config"):
        raise RuntimeError("this Ray version's Tuner has no _local_tuner.get_run_config(); harness sweep --resume "
                           "needs updating (harness/sweep.py:_use_callback)")  # fmt: skip
    internal.get_run_config().callbacks = [callback]


def scheduler_tags(spec: SweepSpec) -> dict[str, str]:
    """``harness.scheduler``, and ``harness.budget_matched``: false when ASHA stops trials early (reports mark it)."""
    matched = spec.tune.scheduler == "fifo"
    return {"harness.scheduler": spec.tune.scheduler, "harness.budget_matched": str(matched).lower()}


def scheduler_options(spec: SweepSpec) -> dict:
    """``TuneConfig`` arguments of ``tune.scheduler``: none for fifo; ASHA over epochs, with the metric set here only.

    ASHA's time axis is ``harness_epochs`` (epochs trained, :func:`step_report`) up to the longest ``train.epochs``.
    """
    if spec.tune.scheduler != "asha":
        return {}
    from ray.tune.schedulers import ASHAScheduler

    epochs = [spec.resolve(first_values(spec) | v).train.epochs for v in spec.variants]
    if "train.epochs" in spec.axes:
        epochs += [int(e) for e in spec.axes["train.epochs"].probe_values()]
    a = spec.tune.asha
    # stop_last_trials=False: a trial that reaches max_t goes on to its final test instead of being stopped there
    asha = ASHAScheduler(time_attr="harness_epochs", max_t=max(epochs), grace_period=a.grace_period,
                         reduction_factor=a.reduction_factor, stop_last_trials=False)  # fmt: skip
    return {"metric": spec.tune.metric, "mode": spec.tune.mode, "scheduler": asha}


def trial_statuses(client, experiment_id: str, parent_run_id: str) -> dict[str, list]:
    """The sweep's child runs by MLflow status (FINISHED, FAILED, KILLED = stopped early, RUNNING)."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)
    out: dict[str, list] = {"FINISHED": [], "FAILED": [], "KILLED": [], "RUNNING": []}
    for r in runs:
        out.setdefault(r.info.status, []).append(r)
    return out


def _run_label(run, spec: SweepSpec) -> str:
    """:func:`_describe` of a child run, from its params."""
    p = run.data.params
    return " ".join(f"{k}={p[k]}" for k in [*spec.variants[0], *spec.axes] if k in p) or run.info.run_id


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


class MlflowSweepCallback(Callback):
    """Ray Tune callback in the sweep driver: the only MLflow writer of a sweep.

    Opens a child run per trial (params = the trial's flattened resolved config), logs each report as metrics
    at its epoch, and ends the run FINISHED, FAILED with the trial's error, or KILLED with ``harness.stopped_early``
    when the scheduler (ASHA) stopped it. A finished trial's run also gets its learning curves (``curves.png``,
    ``curves.csv``). Prints one line per finished trial.

    A trial restarted after a failure, or after ``--resume``, continues its run: the run is found by the trial's
    ``harness.trial_id`` tag under the parent run, its params are not logged again, and a (metric, step) it already
    holds is not logged twice (a trial replays the epoch after its last checkpoint).

    Writes that nothing waits on (metrics, params, figures, a run's end) go through a :class:`BackgroundWriter`;
    it is drained before each Tune experiment snapshot (:meth:`get_state`) and before ``run_sweep`` reads the runs'
    statuses. A trial's ``done`` line is printed once its run is closed.
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

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; a client is rebuilt, not pickled
        return {**self.__dict__, "client": self.client.tracking_uri, "writer": None}

    def __setstate__(self, state: dict) -> None:
        from mlflow.tracking import MlflowClient

        self.__dict__.update({**state, "client": MlflowClient(state["client"]), "writer": BackgroundWriter()})

    def drain(self) -> None:
        """Wait for every queued MLflow write; raises the first that failed."""
        self.writer.drain()

    def get_state(self) -> None:
        """Called by Tune right before it snapshots the experiment (what ``--resume`` restores): the queued writes
        land first, so a trial the snapshot holds as finished, or checkpointed at epoch k, has its MLflow run closed,
        or its metrics up to epoch k, even if the driver dies right after. The callback keeps no Tune state."""
        self.drain()
        return None

    def _label(self, trial) -> str:
        return _describe(trial.config, self.spec)

    def _existing_run(self, trial_id: str) -> str | None:
        """The child run of ``trial_id`` under this parent, from before the driver was restarted."""
        found = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                                        f"and tags.`harness.trial_id` = '{trial_id}'")  # fmt: skip
        return found[0].info.run_id if found else None

    def on_trial_start(self, iteration, trials, trial, **info):
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

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"  retry {self._label(trial)}: the trial failed; Tune restarts it from its last checkpoint", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs[trial.trial_id]
        if _START in result:
            for key, value in json.loads(result[_START]).items():
                self.writer.submit(self.client.set_tag, run_id, key, value)
        metrics = {k: v for k, v in result.items() if "/" in k and not k.startswith("config")}
        metrics.update({k: result[k] for k in ("epoch", "lr") if k in result})
        step = int(result.get("harness_step", 0))
        self.writer.submit(log_metrics, self.client, run_id, metrics, step=step, logged=self.logged[trial.trial_id])
        self.last[trial.trial_id] = {**self.last.get(trial.trial_id, {}), **metrics}
        steps = self.history.setdefault(trial.trial_id, {})
        steps[step] = {**steps.get(step, {}), **metrics}

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.settled:
            return
        run_id, m = self.runs[trial.trial_id], self.last.get(trial.trial_id, {})
        history, label, seconds = dict(self.history.get(trial.trial_id, {})), self._label(trial), time.time()
        seconds -= self.t0[trial.trial_id]
        stopped = not any(k.startswith("test/") for k in m)  # ended before its final test: the scheduler stopped it
        if not stopped:
            self.finished += 1

        def finish() -> None:  # in the writer, after the trial's metrics; its line is printed once the run is closed
            log_learning_curves(self.client, run_id, history)
            if stopped:
                self.client.set_tag(run_id, "harness.stopped_early", "true")
                self.client.set_terminated(run_id, status="KILLED")
                print(f"  stop  {label}: stopped early at epoch {int(m.get('epoch', -1)) + 1}", flush=True)
                return
            self.client.set_terminated(run_id, status="FINISHED")
            shown = " ".join(f"{k}={m[k]:.1f}" for k in ("test/top1", "test/top1:audio_only", "test/top1:video_only")
                             if k in m)  # fmt: skip
            print(f"  done  {label}: {shown} ({seconds:.0f} s)", flush=True)

        self.writer.submit(finish)

    def on_trial_error(self, iteration, trials, trial, **info):
        # The error file is local to the driver right away; get_error() reads storage, which may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.exists() else trial.get_error()) or "unknown error (Ray logs)"
        self.writer.submit(log_failure, self.client, self.runs[trial.trial_id], text)
        first = error_summary(text)
        self.failed.append(f"{self._label(trial)}: {first}")
        print(f"  FAIL  {self._label(trial)}: {first}", flush=True)


def _distributed_workers(spec: SweepSpec) -> int:
    """Ray Train workers per trial when the sweep's (first) trial runs on a distributed engine, else 0."""
    from harness.engines import choose_engine
    from harness.registry import ENGINES

    run = first_trial(spec)
    engine = ENGINES.get(choose_engine(run.engine.name))
    return run.engine.workers if getattr(engine, "distributed", False) else 0


def _max_concurrent(resources: dict, cpu: float, gpu: float) -> int:
    """How many trials fit on the cluster at once, from its CPUs (and GPUs when trials use them)."""
    fits = [int(resources.get("CPU", 1) // cpu)] if cpu else []
    if gpu:
        fits.append(int(resources.get("GPU", 0) // gpu))
    return max(1, min(fits) if fits else 1)


def cli_sweep(path: str, overrides: list[str], tracking_uri: str | None, storage: str | None,
              address: str | None, resume: bool = False) -> int:  # fmt: skip
    """``harness sweep FILE [--resume]``: exit 0 when every trial finished, 1 when some failed."""
    from harness.config import ConfigError

    spec = load_config(path, overrides)
    if not isinstance(spec, SweepSpec):
        raise ConfigError([("search", f"{path} has no search: or tune: section; run it with `harness run {path}`")])
    return 1 if run_sweep(spec, tracking_uri, storage, address, resume) else 0
