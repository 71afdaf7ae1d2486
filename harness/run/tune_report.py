"""How a trial reports inside Ray: the report wire format, and the reporter of a Ray Tune trial.

A trial's reports are flat dicts (:func:`start_report`, :func:`step_report`): the first carries the cost metrics and,
as JSON under ``harness_start``, the trial's tags; each later one an epoch's (or the final) figures at
``harness_step``. The sweep driver's MLflow callback (``harness.sweep.callback``) reads them back, and so does the
``deepspeed`` engine's trial process from its rank 0 (:func:`from_report`), so neither can tell the engines apart.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

START = "harness_start"  # the first report of a trial carries the trial's tags as JSON under this key


def start_report(info: dict) -> dict:
    """The first report of a trial: the cost metrics, and the tags as JSON under ``harness_start``."""
    return {**info["metrics"], START: json.dumps(info["tags"]), "harness_step": 0}


def step_report(metrics: dict[str, float], step: int) -> dict:
    """A report of the figures of ``step`` (an epoch, or ``train.epochs`` for the final ones).

    An epoch's report also counts the epochs trained so far as ``harness_epochs`` (ASHA's time axis).
    """
    return {**metrics, "harness_step": step, **({"harness_epochs": metrics["epoch"] + 1} if "epoch" in metrics else {})}


def from_report(report: dict, reporter) -> None:
    """Pass a report shaped by :func:`start_report` or :func:`step_report` on to a trial reporter."""
    if START in report:
        metrics = {k: v for k, v in report.items() if k not in (START, "harness_step")}
        reporter.start({"tags": json.loads(report[START]), "metrics": metrics})
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
