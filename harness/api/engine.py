"""The training contracts: engines, where a trial's figures and checkpoints go, and hooks into the training loop.

``harness.run.trial.run_trial`` builds the engine of a run (``Engine.build``), the dataset, the method and the task,
and hands the engine a :class:`Reporter` (every figure), a :class:`Checkpoints` (where the training state is kept,
when the reporter keeps one) and :class:`TrainHook` s (called inside the loop). A distributed engine
(``distributed = True``) builds the trial in its own workers instead: ``run_trial`` calls its ``launch``.

Implementations: engines in ``harness.run.engines``; reporters ``harness.run.reporting.PrintReporter`` (the default),
``harness.run.reporting.LocalCheckpoints`` (``harness run``), ``harness.run.tune_report.TuneReporter`` (a sweep's
trial), ``harness.tracking.MlflowReporter``; a hook in ``harness.testing.faults``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from harness.config import RunSpec


class Reporter(Protocol):
    """Where a trial sends what it measures."""

    def start(self, info: dict) -> None:
        """Once, before training: ``{"tags": {...}, "metrics": {"model/params_total": ..., ...}}``."""

    def report(self, metrics: dict[str, float], step: int) -> None:
        """Each epoch's figures, then the final ones (``test/*``, ``perf/*``) at step ``train.epochs``."""


@runtime_checkable
class Checkpoints(Protocol):
    """A reporter that also keeps the trial's training state: restored once before training, saved with every
    epoch's report. ``run_trial`` hands a reporter that has ``restore`` to the engine as its checkpoints."""

    def restore(self) -> dict | None:
        """The state of the last checkpoint (``TorchEngine.state``), or None to start afresh."""

    def report(self, metrics: dict[str, float], step: int, state: dict | None = None) -> None:
        """Report ``metrics`` of ``step``, with ``state`` saved alongside as the trial's latest checkpoint."""


class TrainHook:
    """Called by every engine's training loop; override what you need (the base does nothing).

    Hooks are given to ``run_trial(spec, reporter, hooks=[...])``, or named in ``$HARNESS_HOOKS`` as ``module:attr``
    factories ``factory(spec) -> TrainHook | None`` (comma-separated), which reach the trials of a sweep on every
    node. They observe; they do not change what is trained.
    """

    def on_fit_start(self, spec: RunSpec, resumed: bool, steps: int, rank: int = 0, world: int = 1) -> None:
        """Before the first epoch; ``resumed``: training continues from a checkpoint; ``steps`` per epoch; this
        process's data-parallel ``rank`` of ``world``."""

    def on_step(self, epoch: int, step: int) -> None:
        """Before training step ``step`` of ``epoch`` (0-based)."""


class Engine:
    """Trains and evaluates a method + task; registered in ``ENGINES`` (``engine.name``).

    ``Config`` is the engine's section (``harness.config.EngineConfig`` or a subclass with its own keys).
    """

    Config: ClassVar[type]
    distributed: ClassVar[bool] = False

    def __init__(self, spec: RunSpec):
        self.spec = spec

    @classmethod
    def build(cls, spec: RunSpec) -> Engine:
        """The engine that runs ``spec`` (``auto`` picks one here). Default: ``cls(spec)``."""
        return cls(spec)

    def fit(self, method: nn.Module, task: nn.Module, data: Any, report: Callable[[dict, int], None],
            checkpoints: Checkpoints | None = None, hooks: Sequence[TrainHook] = ()) -> dict[str, float]:  # fmt: skip
        """Train, validate each epoch, test at the end; returns the final metrics."""
        raise NotImplementedError(f"{type(self).__name__} does not train in the trial process (distributed)")

    def launch(self, reporter: Reporter) -> dict[str, float]:
        """A distributed engine: run the trial on its workers, passing rank 0's reports to ``reporter``."""
        raise NotImplementedError(f"{type(self).__name__} is not distributed")
