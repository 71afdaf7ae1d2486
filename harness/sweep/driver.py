"""The sweep driver: a sweep YAML -> Ray Tune ``param_space`` -> one ``run_trial`` per trial, logged to MLflow here.

The driver validates everything first (``load_config``), generates each dataset once, opens the MLflow experiment
and the sweep's parent run, then runs a Tune function trainable per trial. Trials report to Tune only
(``harness.run.tune_report.TuneReporter``); the driver's ``harness.sweep.callback`` writes the child runs, so MLflow
has a single writer. A failed trial is recorded FAILED with its error and the sweep goes on; the command exits 1 if
any failed.

Surviving failures: every epoch's report carries the trial's checkpoint (``tune.report(..., checkpoint=...)``), so
a trial that dies is restarted from its last epoch ``tune.max_failures`` times, in the same MLflow run. After the
driver itself died, ``harness sweep FILE --resume`` restores the Tune experiment named in the parent run's
``harness.ray_experiment`` tag (``Tuner.restore``): finished trials are not run again, the others continue from their
checkpoints, each in the child run that carries its ``harness.trial_id``, under the same parent run. SIGINT/SIGTERM
stops a sweep resumably (exit 130/143), and a failing MLflow store loses nothing (``docs/internals.md``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from harness.config import ConfigError, SweepSpec, load_config
from harness.registry import ENGINES, FORMATS
from harness.run.engines.auto import choose_engine
from harness.run.signals import Interrupts, interrupts
from harness.run.trial import cache_dir
from harness.sweep.callback import SweepLog, attach, detach
from harness.sweep.local import loopback_only, ray_processes, watch
from harness.sweep.resume import StoreUnavailable, SweepInterrupted, close_sweep, interrupted_sweep, trial_statuses
from harness.sweep.space import first_trial, first_values, param_space, run_label, scheduler_tags
from harness.sweep.summary import log_summary
from harness.sweep.trainable import trainable
from harness.tracking import code_tags, experiment_id, open_client, redact, tracking_uri


def prepare_datasets(spec: SweepSpec) -> None:
    """Generate or load every distinct dataset of the sweep once, before trials start (no races, no repeats)."""
    seen = set()
    first = first_values(spec)
    for variant in spec.variants:
        run = spec.resolve({**first, **variant})
        key = (run.dataset.format, run.dataset.params.model_dump_json(), str(cache_dir(run)))
        if key in seen:
            continue
        seen.add(key)
        print(f"preparing dataset {run.dataset.name} ...", flush=True)
        FORMATS.get(run.dataset.format).prepare(run.dataset.params, cache_dir(run))


def run_sweep(spec: SweepSpec, tracking: str | None = None, storage: str | None = None,
              address: str | None = None, resume: bool = False, signals: Interrupts | None = None) -> int:  # fmt: skip
    """Run every trial of ``spec``, or with ``resume`` the unfinished ones of its interrupted invocation; returns the
    number of failed trials.

    Raises:
        SweepInterrupted: ``signals`` (:func:`harness.run.signals.interrupts`) got SIGINT/SIGTERM; the runs of the
            unfinished trials and the parent run are KILLED, ``--resume`` finishes them.
        StoreUnavailable: MLflow kept failing; its writes wait in Tune's snapshot, ``--resume`` writes them.
    """
    import ray
    from ray import tune

    uri = tracking_uri(tracking or spec.base.get("tracking", {}).get("uri"))
    base = dict(spec.base)
    if isinstance(base.get("tracking"), dict) and base["tracking"].get("uri"):  # trials never need it, Tune logs it
        base["tracking"] = {**base["tracking"], "uri": redact(base["tracking"]["uri"])}
    base["cache_dir"] = str(cache_dir(first_trial(spec)).resolve())
    start_ray(address)
    if signals is not None:
        signals.install()  # after ray.init, which puts a SIGTERM handler of its own in place
    try:
        prepare_datasets(spec)
        client = open_client(uri)
        experiment = base.get("tracking", {}).get("experiment") or spec.name
        exp_id = experiment_id(client, experiment)
        if resume:
            parent, path = interrupted_sweep(client, exp_id, spec)
            parent_id = parent.info.run_id
            client.update_run(parent_id, status="RUNNING")
            if "harness.interrupted" in parent.data.tags:
                client.delete_tag(parent_id, "harness.interrupted")
            client.set_tag(parent_id, "harness.resumed", str(int(parent.data.tags.get("harness.resumed", "0")) + 1))
        else:
            name = f"{spec.name}-{spec.source_hash[:8]}-{int(time.time())}"
            path = str(Path(storage or Path.cwd() / ".harness" / "ray").resolve() / name)
            tags = {**code_tags(f"harness sweep {spec.name}"), **scheduler_tags(spec), "harness.sweep": spec.name,
                    "harness.sweep_hash": spec.source_hash, "harness.ray_experiment": path,
                    "harness.num_trials": str(spec.num_trials)}  # fmt: skip
            parent_id = client.create_run(exp_id, tags={**tags, "mlflow.runName": spec.name}).info.run_id
            client.log_text(parent_id, redact(spec.source), "sweep.yaml")  # the file as written
            client.log_text(parent_id, redact(spec.resolved), "sweep.resolved.yaml")  # includes and --set applied
    except BaseException:  # nothing has started: no run to close, only the Ray that start_ray began
        ray.shutdown()
        raise
    log = SweepLog(client, exp_id, parent_id, spec, base)
    if resume:  # the `k/N done` lines count what this invocation runs
        log.total = max(1, spec.num_trials - len(trial_statuses(client, exp_id, parent_id)["FINISHED"]))
    callback = attach(log)  # what Tune holds; a restored experiment's copy reaches this log too

    res = spec.tune.resources
    if spec.base.get("train", {}).get("threads") is None:  # one intra-op thread per CPU the trial holds
        base.setdefault("train", {})["threads"] = max(1, int(res.cpu))
    # A distributed engine's trial process only waits on its Ray Train workers: tune.resources are per worker,
    # and the trial holds a token amount of memory (Ray refuses a request for nothing).
    workers = _distributed_workers(spec)
    share = trial_gpus(res.gpu, ray.cluster_resources())  # Ray then pins each trial to its GPU (CUDA_VISIBLE_DEVICES)
    held = {"cpu": 0, "gpu": 0, "memory": 2**20} if workers else {"cpu": res.cpu, "gpu": share}
    gpu = max(res.gpu or 0, float(ray.cluster_resources().get("GPU", 0) > 0)) if workers else share
    concurrent = spec.tune.max_concurrent_trials or _max_concurrent(ray.cluster_resources(), res.cpu * max(1, workers),
                                                                    gpu * max(1, workers))  # fmt: skip
    what = "resuming its unfinished trials" if resume else f"{spec.num_trials} trials"
    print(f"sweep '{spec.name}': {what}, {concurrent} at a time; MLflow {redact(uri)} "
          f"(experiment '{experiment}', parent run {parent_id}); Ray Tune state in {path}", flush=True)  # fmt: skip
    if spec.tune.scheduler == "asha":  # the reports before epoch 0 and of the final test have no val/*: ASHA skips them
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if resume:
        # Errored trials continue from their checkpoints too: a lost node is worth a retry; a NaN fails fast again.
        tuner = tune.Tuner.restore(path, tune.with_resources(trainable, held), resume_unfinished=True,
                                   resume_errored=True)  # fmt: skip
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
    status, left = "FINISHED", []
    try:
        with _graceful_stop(signals):
            tuner.fit()
    except KeyboardInterrupt:  # a second signal: stop at once, without Tune's last snapshot
        status = "KILLED"
        if signals is None or signals.first is None:
            raise
    except BaseException:
        status = "KILLED"  # the driver failed: `--resume` continues it
        raise
    finally:
        try:
            # Every queued write lands before the statuses are read. A store that keeps failing leaves them queued:
            # they are in the journal of Tune's last snapshot, and `--resume` writes them.
            left = log.drain(timeout=2.0 if status == "KILLED" else None)
            if status == "KILLED" or not left:
                stopped = status == "KILLED" or (signals is not None and signals.first is not None)
                counts = close_sweep(client, exp_id, parent_id, interrupted=stopped, quiet=status == "KILLED")
                if status != "KILLED":
                    _log_summary(client, exp_id, parent_id, spec)
        finally:
            detach(log)
            ray.shutdown()
    if left and status == "FINISHED":
        raise StoreUnavailable(len(left), log.writer.error, path)
    if signals is not None and signals.first is not None:
        done, stopped_early = len(counts["FINISHED"]), len(counts["KILLED"])
        raise SweepInterrupted(signals.first, done, spec.num_trials - done - stopped_early)
    failed = [f"{run_label(r, spec)}: {r.data.tags.get('harness.error', '?')}" for r in counts["FAILED"]]
    stopped = f", {len(counts['KILLED'])} stopped early" if counts["KILLED"] else ""
    print(f"sweep '{spec.name}' done: {len(counts['FINISHED'])} finished ({log.finished} in this run){stopped}, "
          f"{len(failed)} failed", flush=True)  # fmt: skip
    if failed:
        print("failed trials: " + "; ".join(failed), file=sys.stderr)
    for op, error in log.writer.refused:
        print(f"MLflow refused a write of trial {op[1]} ({op[0]}): {error}", file=sys.stderr)
    return len(failed) + len(log.writer.refused)


def _log_summary(client, exp_id: str, parent_id: str, spec: SweepSpec) -> None:
    """The best row of each method on the parent run (``harness.sweep.summary``); a store error only warns."""
    try:
        log_summary(client, exp_id, parent_id, spec)
    except Exception as e:  # the runs are written; the summary is a view of them
        print(f"warning: could not write the sweep's summary to its parent run ({type(e).__name__}: {e})",
              file=sys.stderr)  # fmt: skip


@contextmanager
def _graceful_stop(signals: Interrupts | None):
    """During ``Tuner.fit``: the first SIGINT/SIGTERM asks Tune to stop as its own SIGINT handler does (Tune saves
    the experiment, stops the running trials and returns); Tune's handler only knows SIGINT, and only its SIGUSR1
    one is installed whatever the signal (``TUNE_DISABLE_SIGINT_HANDLER``), so both signals reach it that way."""
    if signals is None:
        yield
        return

    def stop(signum: int) -> bool:
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            return False  # Tune's loop has not started: stop at once
        os.kill(os.getpid(), signal.SIGUSR1)
        return True

    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signals.graceful = stop
    try:
        yield
    finally:
        signals.graceful = None
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before


def start_ray(address: str | None) -> None:
    """``ray.init`` for a sweep: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local one on all cores,
    listening on 127.0.0.1 only."""
    import ray

    # Tune's newer console output prints a configuration box and TensorBoard hints; the harness prints one line per
    # finished trial instead. Read by Tune when the experiment starts.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # With one checkpoint kept per trial, Tune snapshots the experiment after each (what --resume needs) and warns.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Training hooks ($HARNESS_HOOKS, harness.api.TrainHook) and their settings ($HARNESS_HOOK_*) reach the trials
    # on every node this way
    env = {k: v for k, v in os.environ.items() if k == "HARNESS_HOOKS" or k.startswith("HARNESS_HOOK_")}
    runtime_env = {"env_vars": env} if env else None
    quiet = os.environ.get("HARNESS_VERBOSE") != "1"  # harness sweep --verbose: Ray's own logs too
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False, runtime_env=runtime_env,
                 logging_level=logging.ERROR if quiet else logging.INFO)  # fmt: skip
        cpus = ray.cluster_resources().get("CPU", 0)
        print(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address} ({cpus:g} CPUs, "
              f"{len(ray.nodes())} nodes)", flush=True)  # fmt: skip
    else:  # on 127.0.0.1 only (harness.sweep.local); its processes end with this one, however it ends
        if not loopback_only() and ray.util.get_node_ip_address() != "127.0.0.1":
            print("note: Ray was imported before the sweep started, so its local instance listens on "
                  f"{ray.util.get_node_ip_address()}, not only on 127.0.0.1", file=sys.stderr)  # fmt: skip
        before = set(ray_processes())
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                 logging_level=logging.ERROR if quiet else logging.INFO)  # fmt: skip
        watch(ray_processes(before))
    if quiet:  # a failed trial's traceback is in its run's error.txt, and its FAIL line says so
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


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


def _distributed_workers(spec: SweepSpec) -> int:
    """Ray Train workers per trial when the sweep's (first) trial runs on a distributed engine, else 0."""
    run = first_trial(spec)
    engine = ENGINES.get(choose_engine(run.engine.name))
    return run.engine.workers if engine.distributed else 0


def trial_gpus(requested: float | None, cluster: dict) -> float:
    """GPUs each trial holds: ``tune.resources.gpu`` when the sweep names it, else one when the cluster has GPUs.

    Holding a share is what spreads trials over a node's GPUs: Ray sets each trial's ``CUDA_VISIBLE_DEVICES`` to the
    GPU it was given; a trial that holds none sees every GPU and the torch engine takes GPU 0.
    """
    if requested is not None:
        return requested
    return 1.0 if cluster.get("GPU", 0) > 0 else 0.0


def _max_concurrent(resources: dict, cpu: float, gpu: float) -> int:
    """How many trials fit on the cluster at once, from its CPUs (and GPUs when trials use them)."""
    fits = [int(resources.get("CPU", 1) // cpu)] if cpu else []
    if gpu:
        fits.append(int(resources.get("GPU", 0) // gpu))
    return max(1, min(fits) if fits else 1)


def sweep_file(path: str, overrides: list[str], tracking_uri: str | None = None, storage: str | None = None,
               address: str | None = None, resume: bool = False, yes: bool = False) -> int:  # fmt: skip
    """``harness sweep FILE [--resume]``: the number of failed trials (0 when every trial finished).

    A sweep of more than :data:`CONFIRM_TRIALS` trials needs ``yes`` (``--yes``), or a yes on the terminal.

    Raises:
        ConfigError: the file is not a sweep, has errors, or is too large and not confirmed.
        SweepInterrupted: SIGINT/SIGTERM (:func:`run_sweep`).
    """
    spec = load_config(path, overrides)
    if not isinstance(spec, SweepSpec):
        raise ConfigError([("search", f"{path} has no search: or tune: section; run it with `harness run {path}`")])
    if not resume and spec.num_trials > CONFIRM_TRIALS and not yes and not _confirmed(spec):
        raise ConfigError([("search", f"{spec.num_trials:,} trials (more than {CONFIRM_TRIALS:,}): check the grid "
                                      "with `harness validate`, then pass --yes to start it")])  # fmt: skip
    with interrupts() as signals:
        return run_sweep(spec, tracking_uri, storage, address, resume, signals)


CONFIRM_TRIALS = 1000  # a sweep larger than this starts only with --yes (or a yes typed on the terminal)


def _confirmed(spec: SweepSpec) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"sweep '{spec.name}' has {spec.num_trials:,} trials; start it? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
