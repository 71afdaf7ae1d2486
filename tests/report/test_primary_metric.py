"""Reports compare by the task's own primary metric (the runs' ``harness.primary_metric`` tag), not by top-1:
columns, sort order, paired differences, figures and the Δ vs paper of an AudioSet-layout sweep are in mAP, of an AVE
sweep in segment accuracy. Made-up MLflow runs (as ``harness sweep`` leaves them) whose top-1 ranks the rows the
other way round, so a report that still read top-1 would fail; and real tiny trials on the synthetic AudioSet layout.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import RunSpec
from harness.report.figures import bar_data
from harness.report.stats import aggregate, paired_differences, primary_metric
from harness.run.trial import run_trial
from harness.tracking import MlflowReporter, code_tags, experiment_id

PAPERS = Path(__file__).resolve().parents[2] / "reports" / "papers"
SEEDS = (0, 1, 2)


def _log_sweep(uri: str, name: str, primary: str, scores: dict[str, float], cache: Path) -> str:
    """A parent run of sweep ``name`` and a FINISHED child per (method, seed): ``primary`` = score ± seed noise and a
    test/top1 that ranks the methods the other way round."""
    client = MlflowClient(uri)
    tags = {**code_tags(), "harness.sweep": name, "harness.sweep_hash": f"{name:0<64}"[:64], "mlflow.runName": name}
    parent = client.create_run(experiment_id(client, name), tags=tags)
    for i, (method, score) in enumerate(scores.items()):
        for seed in SEEDS:
            run = {"name": name, "seed": seed, "dataset": {"name": "synthetic"}, "backbone": {"name": "tiny"},
                   "method": {"name": method}, "train": {"epochs": 1}, "cache_dir": str(cache)}  # fmt: skip
            value = score + (seed - 1) * 0.5
            with MlflowReporter.open(RunSpec.from_dict(run), uri, parent.info.run_id, {"harness.sweep": name}) as rep:
                rep.start({"tags": {"harness.primary_metric": primary, "harness.dataset_fingerprint": "f" * 16},
                           "metrics": {"model/params_total": 1e5, "model/params_trainable": 1e4,
                                       "model/gflops": 0.01 * (i + 1)}})  # fmt: skip
                rep.report({f"{primary}": value, f"{primary}:audio_only": value - 10,
                            f"{primary}:video_only": value - 20, "test/top1": 90.0 - score}, step=1)  # fmt: skip
    client.set_terminated(parent.info.run_id, status="FINISHED")
    return parent.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp("primary")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    _log_sweep(uri, "paper_mbt_audioset_mini", "test/map", {"late": 30.0, "mbt": 42.0, "vanilla": 38.0}, cache)
    _log_sweep(uri, "paper_lavish_ave_swinv2l", "test/seg_acc", {"frozen": 70.0, "lavish": 79.0, "avish": 75.0},
               cache)  # fmt: skip
    return uri, tmp


def _report(store, spec: str, fmt: str = "md") -> Path:
    uri, tmp = store
    out = tmp / f"{spec}.{fmt}"
    shutil.copy(PAPERS / f"{spec}.yaml", out.with_suffix(".yaml"))  # the shipped spec beside the output
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    return out


def _rows(text: str) -> list[list[str]]:
    lines = [r for r in text.splitlines() if r.startswith("| ") and "---" not in r]
    return [[c.strip() for c in r.strip("|").split("|")] for r in lines]


@pytest.mark.parametrize(
    ("spec", "label", "order", "best", "paper"),
    [
        ("mbt_audioset_mini", "mAP", ["mbt", "vanilla", "late"], 42.0, 43.9),
        ("lavish_ave_swinv2l", "segment acc.", ["lavish", "avish", "frozen"], 79.0, 81.1),
    ],
)
def test_a_sweep_report_sorts_compares_and_references_by_the_task_metric(store, spec, label, order, best, paper):
    text = _report(store, spec).read_text()
    header, *rows = _rows(text)
    assert header[:1] + header[4:7] == ["method", f"test {label}", f"{label} audio only", f"{label} video only"]
    assert header[-3:] == [f"paper {label}", "Δ vs paper", "n"] and "top-1" not in " ".join(header)
    assert [r[0] for r in rows] == order  # by the primary metric; test/top1 ranks them the other way round
    assert rows[0][4] == f"{best:.1f} ± 1.2"  # seeds at ±0.5: t(0.975, 2) x 0.5 / sqrt(3) = 1.24
    assert rows[0][-2] == f"{best - paper:+.1f}"  # Δ vs paper in the same metric
    pairs = re.search(r"## Paired differences \(test (.*), `(.*)` minus each row", text)
    assert pairs.groups() == (label, order[0])
    assert f"- vs `{order[1]}`: +" in text
    csv = pd.read_csv(_report(store, spec, "csv").with_suffix(".csv"))
    assert f"test {label}" in csv.columns and "test top-1" not in csv.columns


def test_the_aggregated_table_figures_and_pairs_use_the_tag(store):
    import mlflow

    uri, _ = store
    mlflow.set_tracking_uri(uri)
    exp = MlflowClient(uri).get_experiment_by_name("paper_mbt_audioset_mini")
    runs = mlflow.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    runs = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert primary_metric(runs) == "test/map"
    table = aggregate(runs, ["method.name"], primary="test/map")
    assert table.attrs["primary"] == "test/map" and list(table["method.name"]) == ["mbt", "vanilla", "late"]
    bars = bar_data(table)  # the default figure's bars: the mAP columns
    assert list(bars.columns[1:]) == ["test mAP", "test mAP ci95", "mAP audio only", "mAP audio only ci95",
                                      "mAP video only", "mAP video only ci95"]  # fmt: skip
    pairs = paired_differences(runs, ["method.name"], "metrics.test/map")
    assert pairs["best"].iloc[0] == "mbt" and pairs["metric"].iloc[0] == "mAP"
    assert pairs.set_index("row").loc["vanilla", "mean"] == pytest.approx(4.0)
    assert primary_metric(runs.drop(columns="tags.harness.primary_metric")) == "test/top1"  # older runs: top-1


def test_runs_of_tasks_with_different_primary_metrics_are_not_mixed(store, capsys):
    uri, tmp = store
    spec = tmp / "mixed.yaml"
    spec.write_text("sweep: [paper_mbt_audioset_mini, paper_lavish_ave_swinv2l]\nrows: [method.name]\n")
    assert main(["report", "--spec", str(spec), "--out", str(tmp / "mixed.md"), "--tracking-uri", uri]) == 1
    assert "different primary metrics (test/map, test/seg_acc)" in capsys.readouterr().err


def test_real_trials_on_the_audioset_layout_report_by_map(tmp_path, capsys):
    """Trials that really ran (tiny, synthetic AudioSet files): their tag says test/map and the report follows."""
    root = tmp_path / "audioset"
    assert main(["synth", "--out", str(root), "--layout", "audioset", "--clips", "8"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tags = {**code_tags(), "harness.sweep": "as_tiny", "harness.sweep_hash": "a" * 64, "mlflow.runName": "as_tiny"}
    parent = client.create_run(experiment_id(client, "as_tiny"), tags=tags).info.run_id
    data = {"name": "audioset", "root": str(root), "cache": str(tmp_path / "cache"), "frames": 2, "image_size": 32,
            "resize": 32, "n_mels": 16, "target_frames": 32, "val_fraction": 0.4, "test_clips": 1,
            "window_seconds": 1.0}  # fmt: skip
    for method in ("late", "vanilla"):
        for seed in (0, 1):
            run = {"name": "as_tiny", "seed": seed, "dataset": data, "method": {"name": method},
                   "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16,
                                "audio_patch": [16, 16]},
                   "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "threads": 1}}  # fmt: skip
            spec = RunSpec.from_dict(run)
            with MlflowReporter.open(spec, uri, parent, {"harness.sweep": "as_tiny"}) as rep:
                run_trial(spec, rep)
    client.set_terminated(parent, status="FINISHED")
    child = client.search_runs([client.get_experiment_by_name("as_tiny").experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent}'")[0]  # fmt: skip
    assert child.data.tags["harness.primary_metric"] == "test/map" and "test/map" in child.data.metrics
    out = tmp_path / "as.md"
    assert main(["report", "--sweep", "as_tiny", "--out", str(out), "--tracking-uri", uri]) == 0
    header, *rows = _rows(out.read_text())
    assert "test mAP" in header and "test top-1" not in header
    maps = [float(r[header.index("test mAP")].split(" ")[0]) for r in rows]
    assert maps == sorted(maps, reverse=True)
