"""``harness eval``: a finished run's test metrics, reproduced exactly from its checkpoint and logged as its child."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import ConfigError
from harness.run.evaluate import read_state, run_eval


def _only_run(client: MlflowClient, experiment: str, parent: str | None = None):
    exp = client.get_experiment_by_name(experiment)
    filt = f"tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    runs = [
        r for r in client.search_runs([exp.experiment_id], filt) if parent or "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(runs) == 1, runs
    return runs[0]


def _test_metrics(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal keys and exactly equal values (NaN equals NaN: AUC of a class-starved tiny split)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.fixture(scope="module")
def finished_run(cache, tmp_path_factory):
    """`harness run` of the tiny synthetic default (2 epochs), in a fresh working directory: (uri, run, file)."""
    tmp = tmp_path_factory.mktemp("eval")
    data = {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16}  # the tiny_run fixture's
    backbone = {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2}
    run = {"name": "tiny", "seed": 0, "dataset": data, "backbone": backbone,
           "method": {"name": "mbt", "fusion_layer": 1, "bottleneck_tokens": 2}, "cache_dir": str(cache),
           "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "threads": 1}}  # fmt: skip
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the checkpoint folder is .harness/checkpoints under the working directory
        assert main(["run", str(path), "--tracking-uri", uri]) == 0
    return uri, _only_run(MlflowClient(uri), "tiny"), path


def test_eval_of_a_run_id_reproduces_its_test_metrics_exactly(finished_run, capsys):
    uri, run, _ = finished_run
    want = _test_metrics(run)
    assert {"test/top1", "test/top5", "test/top1:audio_only", "test/top1:video_only"} <= set(want)
    assert main(["eval", run.info.run_id, "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    children = client.search_runs([run.info.experiment_id], f"tags.`harness.eval_of` = '{run.info.run_id}'",
                                  order_by=["attributes.start_time DESC"])  # fmt: skip
    child = children[0]  # the one just logged
    assert _test_metrics(child) == want  # exactly: the same code path on the same weights and views
    assert child.data.tags["harness.eval_of"] == run.info.run_id
    assert child.data.tags["harness.checkpoint"] == run.data.tags["harness.checkpoint"]
    assert child.data.tags["harness.primary_metric"] == "test/top1" and child.info.status == "FINISHED"
    assert child.data.params["method.name"] == "mbt" and "model/params_total" in child.data.metrics
    assert "test/top1=" in capsys.readouterr().out


def test_eval_of_the_checkpoint_folder_finds_its_run_and_scores_other_splits(finished_run):
    uri, run, _ = finished_run
    folder = run.data.tags["harness.checkpoint"]
    val = run_eval(folder, uri=uri, split="val")
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "val/top1")
    assert val["val/top1"] == max(history, key=lambda m: m.step).value  # the last epoch's val: the same weights
    assert len(MlflowClient(uri).search_runs([run.info.experiment_id], f"tags.`harness.eval_of` = '{run.info.run_id}'"))


def test_set_overrides_change_what_is_scored_and_bad_ones_are_config_errors(finished_run, capsys):
    uri, run, path = finished_run
    state = read_state(Path(run.data.tags["harness.checkpoint"]))
    assert set(state) >= {"model", "spec", "final"} and all(torch.is_tensor(v) for v in state["model"].values())
    fewer = run_eval(run.info.run_id, ["dataset.clips_test=8"], uri)  # another synthetic test split: other numbers
    assert fewer.keys() == _test_metrics(run).keys()
    assert main(["eval", run.info.run_id, "--set", "method.fusion_layer=9", "--tracking-uri", uri]) == 2
    assert "method.fusion_layer" in capsys.readouterr().err
    assert main(["eval", run.info.run_id, "--set", "method.bottleneck_tokens=3", "--tracking-uri", uri]) == 2
    assert "do not fit the model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="neither a checkpoint file or folder nor a run"):
        run_eval("nope", uri=uri)
    same = run_eval(str(run.data.tags["harness.checkpoint"]), uri=uri, config=str(path))  # --config: the run file
    assert {k: same[k] for k in _test_metrics(run)} == _test_metrics(run)


def test_eval_reproduces_a_multi_view_multilabel_run_on_decoded_files(tmp_path, monkeypatch):
    """All views: the synthetic AudioSet layout with two test views per clip; mAP and AUC, each modality masked."""
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", str(tmp_path / "as"), "--layout", "audioset", "--clips", "8"]) == 0
    run = {"name": "as_eval", "dataset": {"name": "audioset", "root": str(tmp_path / "as"), "frames": 2,
           "image_size": 32, "resize": 32, "n_mels": 16, "target_frames": 32, "val_fraction": 0.4, "test_clips": 2,
           "window_seconds": 1.0}, "method": {"name": "vanilla", "fusion_layer": 1},
           "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16,
                        "audio_patch": [16, 16]},
           "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 3, "threads": 1}}  # fmt: skip
    (tmp_path / "as.yaml").write_text(yaml.safe_dump(run))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(tmp_path / "as.yaml"), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    original = _only_run(client, "as_eval")
    assert main(["eval", original.info.run_id, "--tracking-uri", uri]) == 0
    child = _only_run(client, "as_eval", original.info.run_id)
    assert _same(_test_metrics(child), _test_metrics(original)) and "test/map:audio_only" in _test_metrics(child)
    assert not math.isnan(_test_metrics(child)["test/map"])
    assert child.data.tags["harness.primary_metric"] == "test/map"


def test_eval_of_a_sweep_trial_reproduces_its_test_metrics(finished_sweep, tmp_path):
    """A sweep trial's run names its Tune checkpoint; eval scores it into a child of the trial's run."""
    _, uri, _ = finished_sweep
    copy = tmp_path / "mlflow.db"  # a copy of the session's store: the other tests count its runs
    shutil.copy(uri.removeprefix("sqlite:///"), copy)
    uri = f"sqlite:///{copy}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_sweep")
    trials = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.`harness.trial_id` != ''")
    trial = next(r for r in trials if "harness.checkpoint" in r.data.tags)
    assert trial.data.tags["harness.ray_version"] == ray.__version__  # the trial's versions reach its run too
    assert _same(run_eval(trial.info.run_id, uri=uri), _test_metrics(trial))
    child = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")
    assert len(child) == 1 and child[0].data.tags["harness.eval_of"] == trial.info.run_id
