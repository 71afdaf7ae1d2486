"""Reporters of one trial outside a sweep: printed lines, and a local checkpoint folder in front of another reporter.

A sweep's trials use ``harness.run.tune_report.TuneReporter``; ``harness run`` logs through
``harness.tracking.MlflowReporter`` wrapped in :class:`LocalCheckpoints` (``harness.run.local``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import torch

from harness.api import Reporter
from harness.config import RunSpec


class PrintReporter:
    """Prints one line per epoch; the default of ``run_trial`` and what tests use."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def start(self, info: dict) -> None:
        m = info["metrics"]
        print(
            f"model: {m['model/params_total'] / 1e6:.3f}M params ({m['model/params_trainable'] / 1e6:.3f}M trainable),"
            f" {m['model/gflops']:.4f} GFLOPs/clip",
            file=self.stream,
        )

    def report(self, metrics: dict[str, float], step: int) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" in k)
        print(f"[{step}] {shown}", file=self.stream, flush=True)


def checkpoint_dir(spec: RunSpec) -> Path:
    """Where ``harness run`` keeps the checkpoint of ``spec``: ``.harness/checkpoints/<name>-<config digest>``."""
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path.cwd() / ".harness" / "checkpoints" / f"{spec.name}-{digest}"


class LocalCheckpoints:
    """A reporter that keeps the trial's latest checkpoint in a local folder, then passes each report on.

    ``DIR/state.pt`` (``torch.save``; read back with ``weights_only=True``) is replaced atomically with each state the
    engine hands over (a host snapshot) and holds ``extra`` too (``harness run``: the MLflow run id, so that
    ``--resume`` continues the same run). It is written by a background thread while training goes on; the next
    state waits for it, and the final one is on disk before ``report`` returns. A process killed mid-write keeps the
    previous checkpoint.

    Args:
        reporter: where the figures go (an ``MlflowReporter``).
        folder: the checkpoint folder (:func:`checkpoint_dir`).
        extra: values stored in every checkpoint.
        resume: restore from ``folder``; otherwise the trial starts afresh (and overwrites what is there).
    """

    def __init__(self, reporter: Reporter, folder: Path, extra: dict | None = None, resume: bool = False):
        self.reporter, self.folder, self.extra, self.resume = reporter, Path(folder), extra or {}, resume
        self.writing: threading.Thread | None = None
        self.error: BaseException | None = None

    @staticmethod
    def read(folder: Path) -> dict | None:
        """The checkpoint in ``folder``, or None when there is none."""
        path = Path(folder) / "state.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def start(self, info: dict) -> None:
        self.reporter.start(info)

    def restore(self) -> dict | None:
        return self.read(self.folder) if self.resume else None

    def report(self, metrics: dict[str, float], step: int, state: dict | None = None) -> None:
        if state is not None:
            self.wait()
            self.writing = threading.Thread(target=self._write, args=({**state, **self.extra},), daemon=False)
            self.writing.start()
            if state.get("final") is not None:  # the trial's end: on disk before it is reported
                self.wait()
        try:
            self.reporter.report(metrics, step)
        except BaseException:
            self.wait()  # what was handed over is on disk before the error goes on
            raise

    def wait(self) -> None:
        """Until the checkpoint being written is on disk; re-raises its error."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self, state: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "state.pt.tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.folder / "state.pt")  # a crash mid-write leaves the previous checkpoint intact
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            self.error = e
