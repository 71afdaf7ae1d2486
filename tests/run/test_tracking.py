"""`harness run` logs one MLflow run with the names of ``docs/internals.md``; a failure is kept FAILED with its
error."""

from __future__ import annotations

from importlib import metadata

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.cli import main
from harness.tracking import tracking_uri


def _write(tmp_path, run: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return str(path)


def test_harness_run_logs_params_metrics_and_tags(tmp_path, tiny_run):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", _write(tmp_path, tiny_run), "--tracking-uri", uri, "--set", "method.bottleneck_tokens=3"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["method.name"] == "mbt" and p["method.bottleneck_tokens"] == "3" and p["train.lr"] == "0.001"
    assert p["dataset.clips_train"] == "48" and p["backbone.embed_dim"] == "16" and p["seed"] == "0"
    m = run.data.metrics
    for key in ("train/loss", "val/top1", "test/top1", "test/top1:audio_only", "test/top1:video_only",
                "model/params_total", "model/params_trainable", "model/gflops", "model/gmacs",
                "perf/train_samples_per_s", "perf/peak_mem_mb", "perf/wall_s"):  # fmt: skip
        assert key in m, key
    t = run.data.tags
    assert t["harness.device"] == "cpu" and "harness.torch_version" in t and t["harness.git_dirty"] in ("true", "false")
    assert len(t["harness.git_sha"]) == 40
    for name in ("timm", "peft", "ray", "deepspeed", "torchaudio", "torchcodec", "av", "numpy", "safetensors"):
        assert t[f"harness.{name}_version"] == metadata.version(name), name  # what a number depends on
    assert t["harness.torch_version"] == torch.__version__ and t["harness.mlflow_version"] == mlflow.__version__
    history = client.get_metric_history(run.info.run_id, "val/top1")
    assert [h.step for h in history] == [0]


def test_failed_run_is_recorded_failed_with_its_error(tmp_path, tiny_run):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny_run["train"].update(lr=1e30, grad_clip=None)
    with pytest.raises(FloatingPointError):
        main(["run", _write(tmp_path, tiny_run), "--tracking-uri", uri])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert "train/loss is" in run.data.tags["harness.error"]
    assert "model/gflops" in run.data.metrics  # what was logged before the failure is kept


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_a_package_that_is_not_installed_is_tagged_so(monkeypatch):
    monkeypatch.setattr(tracking, "VERSIONED", ("timm", "no-such-distribution-xyz"))
    assert tracking.package_versions() == {"harness.timm_version": metadata.version("timm"),
                                           "harness.no-such-distribution-xyz_version": "not installed"}  # fmt: skip
