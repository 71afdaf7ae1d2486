"""A training hook that makes a trial die mid-epoch, as if its node were lost (resume and retry tests).

Installed through the environment, so that it reaches Ray trial workers on every node (the sweep driver forwards
``HARNESS_HOOKS`` and ``HARNESS_HOOK_*``)::

    HARNESS_HOOKS=harness.testing.faults:from_env HARNESS_HOOK_FAULT=EPOCH[:KEY=VALUE] harness sweep ...

A trial that starts afresh (not from a checkpoint) and matches ``KEY=VALUE`` (a flattened config key and its MLflow
param value, e.g. ``seed=1``) exits with status 17 before step ``min(1, steps - 1)`` of epoch ``EPOCH`` (>= 1, so a
checkpoint exists); in a distributed trial only its last rank does. Its retry resumes from the checkpoint and does not
die again.
"""

from __future__ import annotations

import os

from harness.api import TrainHook
from harness.config import RunSpec, flatten

VARIABLE = "HARNESS_HOOK_FAULT"


class ExitInEpoch(TrainHook):
    """Exit the process (status 17) in the middle of ``epoch`` of a fresh trial."""

    def __init__(self, epoch: int):
        if epoch < 1:
            raise ValueError(f"{VARIABLE}: the epoch must be >= 1 so that a checkpoint exists (got {epoch})")
        self.epoch, self.armed, self.at = epoch, False, 0

    def on_fit_start(self, spec: RunSpec, resumed: bool, steps: int, rank: int = 0, world: int = 1) -> None:
        self.armed, self.at = not resumed and rank == world - 1, min(1, steps - 1)

    def on_step(self, epoch: int, step: int) -> None:
        if self.armed and epoch == self.epoch and step == self.at:
            os._exit(17)


def from_env(spec: RunSpec) -> ExitInEpoch | None:
    """The hook ``$HARNESS_HOOK_FAULT`` asks for (``EPOCH`` or ``EPOCH:KEY=VALUE``), or None for this trial."""
    raw = os.environ.get(VARIABLE)
    if not raw:
        return None
    epoch, _, match = raw.partition(":")
    if not epoch.isdigit():
        raise ValueError(f"{VARIABLE}={raw!r}: must be EPOCH or EPOCH:KEY=VALUE with EPOCH >= 1")
    if match:
        key, _, value = match.partition("=")
        flat = flatten(spec.to_dict())
        if key not in flat or ("null" if flat[key] is None else str(flat[key])) != value:
            return None
    return ExitInEpoch(int(epoch))
