"""A real Ray Tune sweep into a temporary MLflow store: parent + child runs, a failed trial, the report."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.report import aggregate, swept_keys, t_interval

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, cache):
    """Three trials on local Ray: two finish, one (lr = 1e30) fails with a NaN loss."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = {
        "name": "t_sweep",
        "dataset": {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2},
        "method": {"name": "late"},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "grad_clip": None},
        "cache_dir": str(cache),
        "search": {"variants": [
            {"method.name": ["late", "audio_only"], "train.lr": 1.0e-3},
            {"method.name": "video_only", "train.lr": 1.0e30},
        ]},
        "tune": {"max_concurrent_trials": 2},
    }  # fmt: skip
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    code = main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp / "ray")])
    return code, uri, tmp


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


def test_report_from_the_sweep(finished_sweep):
    _, uri, tmp = finished_sweep
    out = tmp / "reports" / "table2.md"
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert "| late " in text and "| audio_only " in text and "video_only" not in text.split("|", 1)[1].split("\n\n")[0]
    assert (tmp / "reports" / "table2.png").stat().st_size > 1000
    csv = pd.read_csv(tmp / "reports" / "table2.csv")
    assert set(csv["method.name"]) == {"late", "audio_only"} and (csv["n"] == 1).all()


def test_report_unknown_sweep_says_what_exists(finished_sweep, capsys):
    _, uri, tmp = finished_sweep
    assert main(["report", "--sweep", "nope", "--out", str(tmp / "x.md"), "--tracking-uri", uri]) == 1
    assert "no sweep named 'nope'" in capsys.readouterr().out


def test_aggregate_groups_seeds_with_a_t_interval():
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 3 + ["late"] * 3,
        "params.method.fusion_layer": ["1"] * 3 + [None] * 3,
        "params.seed": ["0", "1", "2"] * 2,
        "metrics.test/top1": [70.0, 72.0, 74.0, 50.0, 50.0, 50.0],
        "metrics.model/params_total": [10.0] * 6,
    })  # fmt: skip
    keys = swept_keys(runs)
    assert keys == ["method.name"]  # fusion_layer is set for mbt only, and the same for all its runs
    assert swept_keys(runs.assign(**{"params.method.fusion_layer": ["1", "2", "1", None, None, None]})) == [
        "method.name", "method.fusion_layer"]  # fmt: skip
    table = aggregate(runs, keys)
    top = table.iloc[0]
    assert top["method.fusion_layer"] == "1"  # shown though not swept
    assert top["method.name"] == "mbt" and top["n"] == 3 and top["test top-1"] == pytest.approx(72.0)
    assert top["test top-1 ci95"] == pytest.approx(4.303 * 2.0 / 3**0.5, rel=1e-3)
    assert table.iloc[1]["method.fusion_layer"] == "—" and table.iloc[1]["test top-1 ci95"] == 0.0
    assert t_interval(pd.Series([1.0])) != t_interval(pd.Series([1.0]))  # NaN for n = 1
