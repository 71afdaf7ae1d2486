"""``harness run``: one trial in this process, no Ray, logged to MLflow as a run of its own, checkpointed locally.

The checkpoint folder is :func:`harness.run.reporting.checkpoint_dir` of the resolved run; with ``resume`` the
interrupted run of the same file and overrides continues from its last epoch, in the same MLflow run. SIGINT or
SIGTERM stops it before its next training step (:mod:`harness.run.signals`; a second signal at once): the run ends
KILLED and its last epoch's checkpoint stays.
"""

from __future__ import annotations

import sys

from harness.api import TrainHook
from harness.config import ConfigError, RunSpec
from harness.run.progress import ConsoleProgress, free_cores
from harness.run.reporting import LocalCheckpoints, checkpoint_dir
from harness.run.signals import Interrupted, Interrupts, interrupts
from harness.run.trial import run_trial
from harness.tracking import MlflowReporter, redact


class StopAtStep(TrainHook):
    """Raises a pending first signal before the next training step: one raised while the store is being written (an
    SQLite commit) would leave that write's lock held, and the run's KILLED status could not be written."""

    def __init__(self, signals: Interrupts):
        self.signals = signals

    def on_step(self, epoch: int, step: int) -> None:
        if self.signals.first is not None:
            raise Interrupted(self.signals.first)


def run_local(spec: RunSpec, tracking_uri: str | None = None, resume: bool = False) -> dict[str, float]:
    """Train and evaluate ``spec``, logged to MLflow; prints where it went. Returns the final metrics.

    Raises:
        ConfigError: ``resume`` without a checkpoint of this run.
        Interrupted: SIGINT or SIGTERM; its message says after which epoch, and where the checkpoint is.
    """
    folder, run_id = checkpoint_dir(spec), None
    if resume:
        state = LocalCheckpoints.read(folder)
        if state is None or "mlflow_run_id" not in state:
            where = f"no checkpoint of this run in {folder} (same file, same --set, same working directory)"
            raise ConfigError([("--resume", f"{where}; run it without --resume")])
        run_id = state["mlflow_run_id"]
        print(f"resuming MLflow run {run_id} after epoch {state['epoch']} from {folder}", flush=True)
    tags = {"harness.checkpoint": str(folder)}  # where `harness eval RUN_ID` finds the trained model
    if spec.train.threads is None:  # not torch's default on a busy machine (harness.run.progress.free_cores)
        import torch

        torch.set_num_threads(threads := free_cores())
        print(f"train.threads: {threads} (the cores the machine's load leaves free; set train.threads to choose)",
              file=sys.stderr, flush=True)  # fmt: skip
    # The name says the method and seed, and the config digest of the checkpoint folder tells runs of one file with
    # different --set apart: run-mbt-s0-1a2b3c.
    name = f"{spec.name}-{spec.method.name}-s{spec.seed}-{folder.name.rsplit('-', 1)[-1][:6]}"
    tags["mlflow.source.name"] = "harness run " + spec.name
    with_mlflow = MlflowReporter.open(spec, tracking_uri, run_id=run_id, tags=tags, run_name=name)
    try:
        with interrupts() as signals, with_mlflow as mlflow_reporter:
            signals.graceful = lambda signum: True  # the first signal stops before the next step, not mid-write
            progress = ConsoleProgress(mlflow_reporter, spec)  # a bar per epoch, an epoch line
            reporter = LocalCheckpoints(progress, folder, {"mlflow_run_id": mlflow_reporter.run_id}, resume)
            final = run_trial(spec, reporter, hooks=[progress, StopAtStep(signals)])
    except Interrupted as e:
        state = LocalCheckpoints.read(folder)
        where = f"after epoch {state['epoch']} (checkpoint in {folder})" if state else "before its first checkpoint"
        raise Interrupted(e.signum, f"{e}: stopped {where}") from None
    print(" ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("test/")))
    r = mlflow_reporter
    print(f"logged to MLflow run {r.run_id} in experiment '{r.experiment}' at {redact(r.uri)}; checkpoint in {folder}")
    return final
