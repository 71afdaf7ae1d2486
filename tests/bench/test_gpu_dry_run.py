"""``bench/gpu.py --dry-run``: the GPU device check builds and runs every part at tiny size on the CPU and writes its
results (``results.json``, ``summary.md``, ``curves.csv``, the MLflow store)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_step(results: dict) -> None:
    for name in ("mbt", "vanilla", "lavish"):
        row = results["step"][name]
        assert row["clips_per_s"] > 0 and row["timm_clips_per_s"] > 0, row
        assert row["train_gflops_per_clip"] > 0 and row["timm_train_gflops_per_clip"] > 0, row
        assert 0 < row["mfu"] < 1, row  # against the dry run's stand-in peak of 1 TFLOP/s
        assert f"step_vs_timm_vit[{name}]" in results["figures"]
    assert {"mfu_bf16[mbt]", "mfu_bf16[vanilla]"} <= set(results["figures"])


def _check_curves(out: Path, results: dict) -> None:
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == results["curves"]["steps"] == 10
    fp32, bf16 = [float(r["fp32"]) for r in rows], [float(r["bf16"]) for r in rows]
    assert fp32 != bf16  # bf16 autocast really ran: its rounding moves the losses
    assert results["curves"]["agree"], results["curves"]  # ... but not the curve
    summary = (out / "summary.md").read_text()
    assert "Dry run at tiny size" in summary and "| `loss_curves_fp32_vs_bf16[10 steps]` |" in summary
    assert "## Output" in summary


def test_dry_run_of_the_curve_part(tmp_path, cache):
    """The default suite's share (seconds): the engine's train_step at fp32 and under bf16 autocast, the files; the
    dry run's dataset is the session's tiny one (tests/conftest.py), generated once."""
    code = _bench().main([str(tmp_path), "--dry-run", "--only", "curves", "--cache-dir", str(cache)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert code == 0 and results["failed"] == [], (tmp_path / "summary.md").read_text()
    assert results["device"]["dry_run"] and "step" not in results
    _check_curves(tmp_path, results)


def test_unknown_part_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _bench().main([str(tmp_path), "--dry-run", "--only", "step,flops"])
    assert "'flops'" in capsys.readouterr().err


@pytest.mark.slow  # 6-10 min on 2 loaded cores (two Ray sweeps, a DeepSpeed trial); the step part alone 1-2 min
@pytest.mark.ray
def test_dry_run_of_every_part(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--dry-run"], capture_output=True, text=True,
                          timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failed"] == []
    _check_step(results)
    _check_curves(tmp_path, results)
    assert "| `step_vs_timm_vit[mbt]` |" in (tmp_path / "summary.md").read_text()
    assert results["deepspeed"]["precision"] == "bf16" and {"test/top1", "perf/mfu"} <= set(results["deepspeed"])
    assert results["sweep"]["makespan_ratio"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name, trials in (("gpu_deepspeed", 1), ("gpu_sweep_shared", 4), ("gpu_sweep_sequential", 4)):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        finished = [r for r in runs if r.info.status == "FINISHED" and "test/top1" in r.data.metrics]
        assert len(finished) == trials, (name, [(r.info.run_name, r.info.status) for r in runs])


@pytest.mark.gpu
def test_on_a_gpu_fp32_and_bf16_curves_agree(tmp_path):
    """The curve part for real, shortened: the synthetic default on the GPU, TF32 vs bf16 autocast, 40 steps."""
    code = _bench().main([str(tmp_path), "--only", "curves", "--steps", "40"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert code == 0 and results["device"]["name"] != "cpu" and not results["device"]["dry_run"]
    assert results["curves"]["agree"], results["curves"]
