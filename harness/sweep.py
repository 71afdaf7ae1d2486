"""Sweeps: a sweep YAML -> Ray Tune ``param_space`` -> one ``run_trial`` per trial, logged to MLflow by the driver.

The driver validates everything first (``load_config``), generates each dataset once, opens the MLflow experiment
and the sweep's parent run, then runs a Tune function trainable per trial. Trials report to Tune only
(``TuneReporter``); ``MlflowSweepCallback`` in the driver writes the child runs, so MLflow has a single writer.
A failed trial is recorded FAILED with its error and the sweep goes on; the command exits 1 if any failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
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
    run_params,
)

_START = "harness_start"  # the first report of a trial carries the trial's tags as JSON under this key


def start_report(info: dict) -> dict:
    """The first report of a trial: the cost metrics, and the tags as JSON under ``harness_start``."""
    return {**info["metrics"], _START: json.dumps(info["tags"]), "harness_step": 0}


def step_report(metrics: dict[str, float], step: int) -> dict:
    """A report of the figures of ``step`` (an epoch, or ``train.epochs`` for the final ones)."""
    return {**metrics, "harness_step": step}


def from_report(report: dict, reporter) -> None:
    """Pass a report shaped by :func:`start_report` or :func:`step_report` on to a trial reporter."""
    if _START in report:
        metrics = {k: v for k, v in report.items() if k not in (_START, "harness_step")}
        reporter.start({"tags": json.loads(report[_START]), "metrics": metrics})
    elif report:
        reporter.report({k: v for k, v in report.items() if k != "harness_step"}, int(report["harness_step"]))


class TuneReporter:
    """A trial's reporter inside a Ray Tune worker: every figure goes to ``ray.tune.report``.

    The cost and tags are reported at once, before training, so that a trial that fails in its first epoch still
    leaves them in its MLflow run.
    """

    def start(self, info: dict) -> None:
        from ray import tune

        tune.report(start_report(info))

    def report(self, metrics: dict[str, float], step: int) -> None:
        from ray import tune

        tune.report(step_report(metrics, step))


def trial_assignment(config: dict) -> dict:
    """The flat dotted assignment of one Tune trial: its sampled axes plus its variant."""
    return {**{k: v for k, v in config.items() if not k.startswith("__")}, **config.get("__variant__", {})}


def trainable(config: dict) -> None:
    """The Tune function trainable: rebuild the trial's spec from the base and its assignment, then run it."""
    from harness.trial import run_trial

    d = json.loads(config["__base__"])
    for key, value in trial_assignment(config).items():
        set_dotted(d, key, value)
    run_trial(RunSpec.from_dict(d), TuneReporter())


def param_space(spec: SweepSpec, base: dict) -> dict:
    """Ray Tune's search space: one flat key per axis, the variants as one grid axis, the base as a constant."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice}
    space: dict = {"__base__": json.dumps(base)}
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
              address: str | None = None) -> int:  # fmt: skip
    """Run every trial of ``spec``; returns the number of failed trials."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from harness.tracking import _experiment_id, tracking_uri
    from harness.trial import cache_dir

    uri = tracking_uri(tracking or spec.base.get("tracking", {}).get("uri"))
    base = dict(spec.base)
    base["cache_dir"] = str(cache_dir(first_trial(spec)).resolve())
    prepare_datasets(spec)

    client = MlflowClient(uri)
    experiment = base.get("tracking", {}).get("experiment") or spec.name
    exp_id = _experiment_id(client, experiment)
    tags = {**code_tags(), "harness.sweep": spec.name, "harness.sweep_hash": spec.source_hash}
    parent = client.create_run(exp_id, tags={**tags, "mlflow.runName": spec.name})
    client.log_text(parent.info.run_id, spec.source, "sweep.yaml")
    callback = MlflowSweepCallback(client, exp_id, parent.info.run_id, spec, base)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
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
    print(f"sweep '{spec.name}': {spec.num_trials} trials, {concurrent} at a time; MLflow {uri} "
          f"(experiment '{experiment}', parent run {parent.info.run_id})", flush=True)  # fmt: skip
    storage_path = str(Path(storage or Path.cwd() / ".harness" / "ray").resolve())
    tuner = tune.Tuner(
        tune.with_resources(trainable, held),
        param_space=param_space(spec, base),
        tune_config=tune.TuneConfig(num_samples=spec.tune.num_samples, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{spec.source_hash[:8]}-{int(time.time())}",
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures, fail_fast=False),
            callbacks=[callback],
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        failed = callback.failed
        client.set_tag(parent.info.run_id, "harness.failed_trials", str(len(failed)))
        client.set_terminated(parent.info.run_id, status="FINISHED")
        ray.shutdown()
    done = callback.finished
    print(f"sweep '{spec.name}' done: {done} finished, {len(failed)} failed", flush=True)
    if failed:
        print("failed trials: " + "; ".join(failed), file=sys.stderr)
    return len(failed)


class MlflowSweepCallback(Callback):
    """Ray Tune callback in the sweep driver: the only MLflow writer of a sweep.

    Opens a child run per trial (params = the trial's flattened resolved config), logs each report as metrics
    at its epoch, and ends the run FINISHED, or FAILED with the trial's error. A finished trial's run also gets its
    learning curves (``curves.png``, ``curves.csv``) from the reports held here. Prints one line per finished trial.
    """

    def __init__(self, client, experiment_id: str, parent_run_id: str, spec, base: dict):
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.spec, self.base = spec, base
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.finished, self.failed, self.last = 0, [], {}
        self.history: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> step -> metrics (a retry overwrites)
        self.t0: dict[str, float] = {}

    def _label(self, trial) -> str:
        return _describe(trial.config, self.spec)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:  # a retry continues its run
            return
        d = json.loads(trial.config["__base__"])
        for key, value in trial_assignment(trial.config).items():
            set_dotted(d, key, value)
        tags = {**code_tags(), "mlflow.parentRunId": self.parent_run_id, "harness.sweep": self.spec.name,
                "harness.sweep_hash": self.spec.source_hash, "harness.trial_id": trial.trial_id,
                "mlflow.runName": f"{self.spec.name}-{trial.trial_id}"}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        self.t0[trial.trial_id] = time.time()
        log_params(self.client, run.info.run_id, run_params(RunSpec.from_dict(d).to_dict()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs[trial.trial_id]
        if _START in result:
            for key, value in json.loads(result[_START]).items():
                self.client.set_tag(run_id, key, value)
        metrics = {k: v for k, v in result.items() if "/" in k and not k.startswith("config")}
        metrics.update({k: result[k] for k in ("epoch", "lr") if k in result})
        step = int(result.get("harness_step", 0))
        log_metrics(self.client, run_id, metrics, step=step)
        self.last[trial.trial_id] = {**self.last.get(trial.trial_id, {}), **metrics}
        steps = self.history.setdefault(trial.trial_id, {})
        steps[step] = {**steps.get(step, {}), **metrics}

    def on_trial_complete(self, iteration, trials, trial, **info):
        log_learning_curves(self.client, self.runs[trial.trial_id], self.history.get(trial.trial_id, {}))
        self.client.set_terminated(self.runs[trial.trial_id], status="FINISHED")
        self.finished += 1
        m = self.last.get(trial.trial_id, {})
        shown = " ".join(f"{k}={m[k]:.1f}" for k in ("test/top1", "test/top1:audio_only", "test/top1:video_only")
                         if k in m)  # fmt: skip
        print(f"  done  {self._label(trial)}: {shown} ({time.time() - self.t0[trial.trial_id]:.0f} s)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        # The error file is local to the driver right away; get_error() reads storage, which may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.exists() else trial.get_error()) or "unknown error (Ray logs)"
        log_failure(self.client, self.runs[trial.trial_id], text)
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
              address: str | None) -> int:  # fmt: skip
    """``harness sweep FILE``: exit 0 when every trial finished, 1 when some failed."""
    from harness.config import ConfigError

    spec = load_config(path, overrides)
    if not isinstance(spec, SweepSpec):
        raise ConfigError([("search", f"{path} has no search: or tune: section; run it with `harness run {path}`")])
    return 1 if run_sweep(spec, tracking_uri, storage, address) else 0
