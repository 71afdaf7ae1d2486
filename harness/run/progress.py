"""What ``harness run`` shows while it trains: a tqdm bar per epoch (steps, samples/s, time left) on a terminal, and
one line per epoch everywhere (loss, validation metrics, samples/s, ETA of the run).

:class:`ConsoleProgress` is both a ``TrainHook`` (the engine calls ``on_step`` before each step) and a reporter in
front of another (``harness run``'s MLflow reporter): an epoch's report closes its bar and prints the epoch line.
"""

from __future__ import annotations

import sys
import time

from harness.api import Reporter, TrainHook
from harness.config import RunSpec


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ConsoleProgress(TrainHook):
    """A bar per epoch (on a terminal; ``bar=None``: when stderr is one) and an epoch line, in front of ``reporter``."""

    def __init__(self, reporter: Reporter, spec: RunSpec, stream=None, bar: bool | None = None):
        self.reporter, self.spec, self.stream = reporter, spec, stream or sys.stderr
        self.bar_on = self.stream.isatty() if bar is None else bar
        self.epochs, self.batch = spec.train.epochs, spec.train.batch_size
        self.steps, self.bar, self.epoch = 0, None, -1
        self.t0 = self.epoch_t0 = time.perf_counter()
        self.done_epochs, self.first = 0, 0

    # -- TrainHook -------------------------------------------------------------------------------------------------

    def on_fit_start(self, spec: RunSpec, resumed: bool, steps: int, rank: int = 0, world: int = 1) -> None:
        self.steps, self.t0 = steps, time.perf_counter()

    def on_step(self, epoch: int, step: int) -> None:
        if epoch != self.epoch:  # a new epoch begins
            self.epoch, self.epoch_t0 = epoch, time.perf_counter()
            if self.done_epochs == 0:
                self.first = epoch  # a resumed run starts after its checkpoint
            if self.bar_on:
                from tqdm import tqdm

                desc = f"epoch {epoch + 1}/{self.epochs}"
                self.bar = tqdm(total=self.steps * self.batch, unit="sample", unit_scale=True, leave=False, desc=desc,
                                file=self.stream, dynamic_ncols=True)  # fmt: skip
        elif self.bar is not None:
            self.bar.update(self.batch)

    # -- Reporter ---------------------------------------------------------------------------------------------------

    def start(self, info: dict) -> None:
        m = info["metrics"]
        print(f"model: {m['model/params_total'] / 1e6:.3f}M params ({m['model/params_trainable'] / 1e6:.3f}M "
              f"trainable), {m['model/gflops']:.4f} GFLOPs/clip; {self.epochs} epochs, batches of {self.batch}",
              file=self.stream, flush=True)  # fmt: skip
        self.reporter.start(info)

    def report(self, metrics: dict[str, float], step: int, *rest) -> None:
        if "train/loss" in metrics:
            self.line(metrics, step)
        self.reporter.report(metrics, step, *rest)

    def line(self, metrics: dict[str, float], epoch: int) -> None:
        """``epoch 3/10  loss 1.234  val/top1 45.6  133 samples/s  ETA 2m10s``; closes the epoch's bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        now = time.perf_counter()
        self.done_epochs += 1
        rate = self.steps * self.batch / max(now - self.epoch_t0, 1e-9)
        left = (now - self.t0) / self.done_epochs * (self.epochs - 1 - epoch)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/"))
        print(f"epoch {epoch + 1}/{self.epochs}  loss {metrics['train/loss']:.4f}  {shown}  {rate:.1f} samples/s"
              f"  ETA {_duration(left)}", file=self.stream, flush=True)  # fmt: skip


def free_cores() -> int:
    """Intra-op threads for ``harness run`` when ``train.threads`` is null: the cores the machine's load leaves
    free (at least 1, at most torch's default). Threads that wait for busy cores make torch's spinning workers
    slower than one thread: on a loaded 2-core machine 10.0 samples/s with torch's default of 2 against 140.7 with
    1 (``harness run run.yaml --set train.epochs=1``, the same numbers either way)."""
    import os

    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average (Windows)
        load = 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - round(load)))
