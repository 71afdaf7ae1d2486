"""The Ray Tune function trainable: a trial rebuilds its run from the base and its assignment, then runs it."""

from __future__ import annotations

import json

from harness.config import RunSpec, set_dotted
from harness.run.trial import run_trial
from harness.run.tune_report import TuneReporter
from harness.sweep.space import trial_assignment


def trainable(config: dict) -> None:
    """The Tune function trainable: rebuild the trial's spec from the base and its assignment, then run it."""
    d = json.loads(config["__base__"])
    for key, value in trial_assignment(config).items():
        set_dotted(d, key, value)
    run_trial(RunSpec.from_dict(d), TuneReporter(config.get("__storage__")))
