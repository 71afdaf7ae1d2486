"""What a sweep leaves in MLflow for its UI: run names from what varies, the parent's summary, MLflow's own source
tags and dataset inputs, artifacts beside the store; and `harness sweep --dry-run`."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main


@pytest.mark.ray
def test_the_parent_run_answers_which_method_is_best_at_what_cost(finished_sweep):
    _, uri, tmp = finished_sweep
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_sweep")
    assert exp.artifact_location == (tmp / "mlartifacts" / "t_sweep").resolve().as_uri()  # beside the store
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    kids = [r for r in runs if r is not parent]
    names = {r.data.tags["mlflow.runName"] for r in kids}
    assert names == {"late-lr0.001", "audio_only-lr0.001", "video_only-lr1e+30"}
    m = parent.data.metrics
    for method in ("late", "audio_only"):  # video_only failed: not in the summary
        assert m[f"{method}/test/top1"] > 0 and m[f"{method}/gflops"] > 0 and m[f"{method}/n"] == 1
        assert parent.data.params[f"best.{method}"] == "lr0.001"
    assert "video_only/test/top1" not in m and "| late | lr0.001 |" in parent.data.tags["mlflow.note.content"]
    assert "summary.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    done = [r for r in kids if r.info.status == "FINISHED"]
    for r in done:
        assert r.data.tags["mlflow.source.git.commit"] == r.data.tags["harness.git_sha"]
        assert r.data.tags["mlflow.source.type"] == "LOCAL"
        (inp,) = r.inputs.dataset_inputs
        assert inp.dataset.name == "synthetic" and inp.dataset.digest == r.data.tags["harness.dataset_fingerprint"][:36]
        assert '"train": 48' in inp.dataset.profile


def test_dry_run_lists_the_trials(capsys):
    assert main(["sweep", "sweeps/bottlenecks.yaml", "--set", "method.bottleneck_tokens=[1,4]", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("6 trials") and "nothing was run" in lines[-1]
    assert {line.split()[1] for line in lines[:-1]} == {f"mbt-Nb{n}-s{s}" for n in (1, 4) for s in (0, 1, 2)}
