"""`harness run`'s console: a bar per epoch and an epoch line (loss, validation, samples/s, ETA)."""

from __future__ import annotations

import io
import re

from harness.config import RunSpec
from harness.run.progress import ConsoleProgress, free_cores
from harness.run.trial import run_trial


class Recorder:
    def __init__(self):
        self.reports = []

    def start(self, info):
        pass

    def report(self, metrics, step):
        self.reports.append(step)


def test_a_bar_per_epoch_and_an_epoch_line(tiny_run):
    spec = RunSpec.from_dict({**tiny_run, "train": {**tiny_run["train"], "epochs": 2}})
    out, inner = io.StringIO(), Recorder()
    progress = ConsoleProgress(inner, spec, stream=out, bar=True)
    run_trial(spec, progress, hooks=[progress])
    text = out.getvalue()
    lines = re.findall(r"epoch (\d)/2  loss \d+\.\d{4}  val/top1 [\d.]+.*  [\d.]+ samples/s  ETA \dm\d\ds", text)
    assert lines == ["1", "2"], text
    assert "epoch 1/2:" in text and "sample" in text  # tqdm's bar, labelled by epoch, counting samples
    assert inner.reports == [0, 1, 2]  # every report reaches the reporter behind it
    assert 1 <= free_cores()
