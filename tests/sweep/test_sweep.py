"""A real Ray Tune sweep into a temporary MLflow store (``finished_sweep``): parent + child runs, a failed trial."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray


def test_sweep_goes_on_past_a_failed_trial_and_exits_nonzero(finished_sweep):
    code, uri, _ = finished_sweep
    assert code == 1
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.data.tags["harness.sweep"] == "t_sweep" and len(parent.data.tags["harness.sweep_hash"]) == 64
    assert parent.data.tags["harness.failed_trials"] == "1"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    status = {c.data.params["method.name"]: c for c in children}
    assert status["late"].info.status == status["audio_only"].info.status == "FINISHED"
    failed = status["video_only"]
    assert failed.info.status == "FAILED" and "train/loss is" in failed.data.tags["harness.error"]
    assert "model/params_total" in failed.data.metrics  # logged before the failure, kept
    ok = status["late"]
    assert ok.data.params["train.lr"] == "0.001" and ok.data.tags["harness.trial_id"]
    history = client.get_metric_history(ok.info.run_id, "val/top1")
    assert [h.step for h in history] == [0, 1]
    assert "test/top1:video_only" in ok.data.metrics


def test_finished_trials_log_their_learning_curves(finished_sweep, tmp_path):
    _, uri, _ = finished_sweep
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_sweep")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    for run in children:
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        if run.info.status != "FINISHED":
            assert "curves.csv" not in names
            continue
        assert {"curves.csv", "curves.png"} <= names
        curves = pd.read_csv(client.download_artifacts(run.info.run_id, "curves.csv", str(tmp_path)))
        assert list(curves["epoch"]) == [0, 1] and {"train/loss", "val/top1"} <= set(curves.columns)
        history = client.get_metric_history(run.info.run_id, "val/top1")
        assert list(curves["val/top1"]) == pytest.approx([h.value for h in sorted(history, key=lambda h: h.step)])
        png = Path(client.download_artifacts(run.info.run_id, "curves.png", str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_trials_hold_a_gpu_by_default_when_the_cluster_has_gpus():
    from harness.sweep.driver import trial_gpus

    assert trial_gpus(None, {"CPU": 8, "GPU": 2}) == 1.0  # one each: Ray pins every trial to its own GPU
    assert trial_gpus(None, {"CPU": 8}) == 0.0
    assert trial_gpus(0.25, {"CPU": 8, "GPU": 1}) == 0.25  # four trials share one
    assert trial_gpus(0, {"CPU": 8, "GPU": 2}) == 0  # named: as the sweep says
