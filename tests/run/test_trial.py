"""run_trial: the one code path of `harness run`, the sweeps and the tests."""

from __future__ import annotations

import pytest
import torch

from harness.config import RunSpec
from harness.registry import METHODS
from harness.run.engines.torch_engine import NonFiniteLossError
from harness.run.trial import run_trial


class Recorder:
    def __init__(self):
        self.info, self.reports = None, []

    def start(self, info):
        self.info = info

    def report(self, metrics, step):
        self.reports.append((step, dict(metrics)))


def test_run_trial_reports_every_contract_metric(tiny_run):
    rec = Recorder()
    final = run_trial(RunSpec.from_dict(tiny_run), rec)
    assert set(rec.info["metrics"]) == {"model/params_total", "model/params_trainable", "model/gflops", "model/gmacs",
                                        "model/train_gflops"}  # fmt: skip
    assert rec.info["metrics"]["model/gflops"] == pytest.approx(2 * rec.info["metrics"]["model/gmacs"])
    assert rec.info["tags"]["harness.device"] == "cpu" and rec.info["tags"]["harness.precision"] == "fp32"
    steps = [s for s, _ in rec.reports]
    assert steps == [0, 1]  # one epoch, then the final figures at step = epochs
    assert {"train/loss", "val/top1", "val/top5", "lr", "epoch"} <= set(rec.reports[0][1])
    for key in ("test/top1", "test/top5", "test/top1:audio_only", "test/top1:video_only", "perf/train_samples_per_s",
                "perf/peak_mem_mb", "perf/wall_s", "perf/step_ms", "perf/data_wait_ms", "perf/data_wait_frac",
                "perf/train_tflops"):  # fmt: skip
        assert key in final and final[key] == final[key], key  # present and not NaN
    assert 0 <= final["test/top1"] <= 100
    assert "perf/mfu" not in final  # a CPU has no peak in the table
    assert 0 < final["perf/data_wait_frac"] < 1 and final["perf/step_ms"] > 0


def test_run_trial_is_deterministic(tiny_run):
    a = run_trial(RunSpec.from_dict(tiny_run), Recorder())
    b = run_trial(RunSpec.from_dict(tiny_run), Recorder())
    assert a["train/loss"] == b["train/loss"] and a["test/top1"] == b["test/top1"]
    tiny_run["seed"] = 1
    c = run_trial(RunSpec.from_dict(tiny_run), Recorder())
    assert c["train/loss"] != a["train/loss"]


@pytest.mark.parametrize("method", ["vanilla", "cross", "late", "audio_only", "video_only", "lavish", "avish"])
def test_every_method_trains(tiny_run, method):
    tiny_run["method"] = {"name": method}
    final = run_trial(RunSpec.from_dict(tiny_run), Recorder())
    assert 0 <= final["test/top1"] <= 100


def test_nan_loss_names_where_and_what_to_do(tiny_run):
    tiny_run["train"].update(lr=1e30, grad_clip=None)
    with pytest.raises(NonFiniteLossError, match=r"train/loss is (nan|inf).*epoch 0.*lower train.lr"):
        run_trial(RunSpec.from_dict(tiny_run), Recorder())


def test_frozen_parameters_stay_frozen(tiny_run, monkeypatch):
    """The engine optimises only requires_grad parameters (frozen-backbone methods rely on it)."""
    cls = METHODS.get("late")
    orig_init = cls.__init__

    def frozen_init(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        for p in self.tokens.parameters():
            p.requires_grad_(False)

    monkeypatch.setattr(cls, "__init__", frozen_init)
    tiny_run["method"] = {"name": "late"}
    spec = RunSpec.from_dict(tiny_run)
    from harness.run.engines.torch_engine import TorchEngine
    from harness.run.trial import build_dataset, build_model

    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    before = {k: v.clone() for k, v in method.tokens.state_dict().items()}
    TorchEngine(spec).fit(method, task, data, lambda m, s: None)
    after = method.tokens.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_peak_memory_is_per_trial_in_a_reused_worker():
    """A sweep worker that runs several trials (tune.reuse_actors) reports each trial's own peak RSS (Linux)."""
    import sys

    from harness.run.engines.torch_engine import peak_memory_mb, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("the per-trial reset uses /proc/self/clear_refs")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    big += 1
    with_big = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < with_big - 48
