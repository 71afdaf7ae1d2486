"""Surviving failures: checkpoints each epoch, a trial killed mid-epoch resumes in the same MLflow run, a sweep whose
driver was SIGKILLed finishes with ``--resume`` (no trial rerun, no duplicate run), and ASHA sweeps are marked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import ConfigError, RunSpec, load_config
from harness.run.reporting import LocalCheckpoints
from harness.run.trial import run_trial

ROOT = Path(__file__).resolve().parents[2]
FAULT = {"HARNESS_HOOKS": "harness.testing.faults:from_env"}  # + HARNESS_HOOK_FAULT=EPOCH[:KEY=VALUE]


class Recorder:
    def __init__(self, crash_after: int | None = None):
        self.reports, self.crash_after = [], crash_after

    def start(self, info):
        pass

    def report(self, metrics, step):
        self.reports.append((step, dict(metrics)))
        if step == self.crash_after:
            raise KeyboardInterrupt(f"stopped after step {step}")


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _children(client: MlflowClient, name: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags], [
        r for r in runs if "mlflow.parentRunId" in r.data.tags
    ]


def test_resumed_training_equals_uninterrupted_training(tiny_run, tmp_path):
    """Model, optimiser, schedule and RNG come back exactly: the resumed run ends with the same numbers."""
    tiny_run["train"].update(epochs=3)
    spec = RunSpec.from_dict(tiny_run)
    whole = Recorder()
    expected = run_trial(spec, LocalCheckpoints(whole, tmp_path / "a"))

    first = Recorder(crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_trial(spec, LocalCheckpoints(first, tmp_path / "b"))
    assert LocalCheckpoints.read(tmp_path / "b")["epoch"] == 1
    second = Recorder()
    resumed = run_trial(spec, LocalCheckpoints(second, tmp_path / "b", resume=True))
    assert [s for s, _ in second.reports] == [2, 3]  # epoch 2, then the final figures
    for key in ("train/loss", "val/top1", "test/top1", "test/top5:audio_only"):
        assert resumed[key] == expected[key], key
    assert second.reports[0][1]["lr"] == whole.reports[2][1]["lr"]
    assert LocalCheckpoints.read(tmp_path / "b")["final"]["test/top1"] == expected["test/top1"]
    again = Recorder()  # a finished checkpoint: nothing is trained again, the end is reported once more
    assert run_trial(spec, LocalCheckpoints(again, tmp_path / "b", resume=True))["test/top1"] == expected["test/top1"]
    assert [s for s, _ in again.reports] == [3]


def test_harness_run_killed_mid_epoch_resumes_the_same_mlflow_run(tiny_run, tmp_path, monkeypatch, capsys):
    tiny_run["train"].update(epochs=3)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))", "run",
           str(path), "--tracking-uri", uri]  # fmt: skip
    env = {**os.environ, **FAULT, "HARNESS_HOOK_FAULT": "2"}
    died = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == 17, died.stderr[-2000:]  # os._exit in the middle of epoch 2

    monkeypatch.chdir(tmp_path)  # the checkpoint folder is relative to the working directory
    assert main(["run", str(path), "--tracking-uri", uri, "--resume"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and "harness.error" not in run.data.tags
    assert [s for s, _ in _history(client, run.info.run_id, "val/top1")] == [0, 1, 2]
    assert [s for s, _ in _history(client, run.info.run_id, "model/params_total")] == [0]
    assert [s for s, _ in _history(client, run.info.run_id, "test/top1")] == [3]
    assert run.data.params["train.epochs"] == "3"
    assert main(["run", str(path), "--tracking-uri", uri, "--resume", "--set", "seed=5"]) == 2
    assert "--resume: no checkpoint of this run" in capsys.readouterr().err


def test_asha_settings_are_validated(tiny_run, tmp_path):
    sweep = {
        **tiny_run,
        "name": "t_asha",
        "train": {**tiny_run["train"], "epochs": 3},
        "search": {"seed": {"grid": [0, 1]}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**sweep, "tune": {"scheduler": "asha", "asha": {"grace_period": 1}}}))
    spec = load_config(path)
    assert spec.tune.scheduler == "asha" and spec.tune.asha.reduction_factor == 3
    bad = {"scheduler": "asha", "metric": "test/top1", "asha": {"grace_period": 3, "reduction_factor": 1, "x": 1}}
    path.write_text(yaml.safe_dump({**sweep, "tune": bad}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = {k for k, _ in e.value.errors}
    assert {"tune.asha.reduction_factor", "tune.asha.x"} <= keys
    path.write_text(
        yaml.safe_dump({**sweep, "tune": {"scheduler": "asha", "metric": "test/top1", "asha": {"grace_period": 3}}})
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert {k for k, _ in e.value.errors} == {"tune.metric", "tune.asha.grace_period"}
    path.write_text(yaml.safe_dump({**sweep, "tune": {"scheduler": "hyperband"}}))
    with pytest.raises(ConfigError, match="fifo"):
        load_config(path)
    path.write_text(yaml.safe_dump({**sweep, "tune": {"asha": {"grace_period": 1}}}))
    with pytest.raises(ConfigError, match="only used with tune.scheduler: asha"):
        load_config(path)


def _sweep_file(tiny_run: dict, tmp_path: Path, name: str, **tune) -> Path:
    """Two seeds of the tiny late-fusion run, 2 epochs each, one trial at a time."""
    sweep = {**tiny_run, "name": name, "method": {"name": "late"}, "train": {**tiny_run["train"], "epochs": 2},
             "search": {"seed": {"grid": [0, 1]}}, "tune": {"max_concurrent_trials": 1, **tune}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.ray
def test_sweep_survives_a_trial_killed_mid_epoch_and_a_killed_driver(tiny_run, tmp_path, capsys):
    """Trial seed=0 dies in epoch 1 (os._exit) and is retried from its checkpoint (tune.max_failures: 1); once it has
    finished, the driver is SIGKILLed; `--resume` then runs seed 1 only, in the same parent run."""
    path = _sweep_file(tiny_run, tmp_path, "t_resume", max_failures=1)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "ray")
    args = ["sweep", str(path), "--tracking-uri", uri, "--storage", storage]
    cmd = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    env = {**os.environ, **FAULT, "HARNESS_HOOK_FAULT": "1:seed=0"}
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # fmt: skip
    lines: list[str] = []
    first_done = threading.Event()

    def read() -> None:
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("  done"):
                first_done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert first_done.wait(240), "".join(lines)[-3000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:  # the driver's local Ray (raylet, trial workers) goes down with it, as when its node is lost
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first = "".join(lines)
    assert "retry seed=0" in first and first.count("  done") == 1, first[-3000:]

    client = MlflowClient(uri)
    parents, children = _children(client, "t_resume")
    (done,) = [c for c in children if c.info.status == "FINISHED"]
    assert done.data.params["seed"] == "0" and parents[0].info.status == "RUNNING"
    assert [s for s, _ in _history(client, done.info.run_id, "val/top1")] == [0, 1]  # epoch 1 replayed, logged once

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("  done") == 1 and "done  seed=0" not in out, out  # the finished trial is not rerun

    parents, children = _children(client, "t_resume")
    assert len(parents) == 1 and parents[0].data.tags["harness.resumed"] == "1"
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["harness.failed_trials"] == "0"
    assert len(children) == 2 and sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    assert len({c.data.tags["harness.trial_id"] for c in children}) == 2
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags.get("harness.error")
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key, steps in (("val/top1", [0, 1]), ("train/loss", [0, 1]), ("model/params_total", [0]),
                           ("test/top1", [2])):  # fmt: skip
            assert [s for s, _ in _history(client, c.info.run_id, key)] == steps, (c.data.params["seed"], key)
    again = client.get_run(done.info.run_id)
    assert again.info.end_time == done.info.end_time  # untouched by the resumed sweep

    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(parents[0].data.tags["harness.ray_experiment"])
    assert len(analysis.trials) == 2 and {t.status for t in analysis.trials} == {"TERMINATED"}


def test_report_marks_rows_of_asha_sweeps_not_budget_matched(tmp_path):
    """The report reads the budget tag from MLflow alone: an ASHA sweep's rows get budget 'ASHA: not matched'."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t_budget")
    tags = {"harness.sweep": "t_budget", "harness.sweep_hash": "0" * 64, "harness.scheduler": "asha",
            "harness.budget_matched": "false"}  # fmt: skip
    parent = client.create_run(exp, tags=tags).info.run_id
    for seed, method, top1 in ((0, "late", 50.0), (1, "late", 54.0), (0, "mbt", 61.0)):
        run = client.create_run(exp, tags={**tags, "mlflow.parentRunId": parent}).info.run_id
        client.log_param(run, "method.name", method)
        client.log_param(run, "seed", str(seed))
        for key, value in (("test/top1", top1), ("model/params_total", 1e6), ("model/gflops", 0.1)):
            client.log_metric(run, key, value)
        client.set_terminated(run)
    out = tmp_path / "r.md"
    assert main(["report", "--sweep", "t_budget", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert "| budget" in text and text.count("ASHA: not matched |") == 2 and "not budget-matched" in text
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert set(csv["budget"]) == {"ASHA: not matched"} and sorted(csv["n"]) == [1, 2]


@pytest.mark.ray
@pytest.mark.slow  # ~40 s on 2 idle cores: three 3-epoch trials on local Ray
def test_asha_sweep_stops_weak_trials_and_is_tagged(tiny_run, tmp_path):
    sweep = {**tiny_run, "name": "t_asha", "method": {"name": "late"}, "train": {**tiny_run["train"], "epochs": 3},
             "search": {"variants": [{"train.lr": [3.0e-3, 1.0e-6, 1.0e-7]}]},
             "tune": {"max_concurrent_trials": 1, "scheduler": "asha", "metric": "train/loss", "mode": "min",
                      "asha": {"grace_period": 1, "reduction_factor": 2}}}  # fmt: skip
    path = tmp_path / "asha.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    client = MlflowClient(uri)
    (parent,), children = _children(client, "t_asha")
    assert parent.data.tags["harness.scheduler"] == "asha" and parent.data.tags["harness.budget_matched"] == "false"
    assert {c.data.tags["harness.budget_matched"] for c in children} == {"false"} and len(children) == 3
    stopped = [c for c in children if c.info.status == "KILLED"]
    assert stopped and all(c.data.tags["harness.stopped_early"] == "true" for c in stopped)
    assert {c.data.params["train.lr"] for c in stopped} <= {"1e-06", "1e-07"}
    for c in stopped:  # stopped after an epoch before the last, with no final test
        assert len(_history(client, c.info.run_id, "val/top1")) < 3 and "test/top1" not in c.data.metrics
    out = tmp_path / "report" / "asha.md"
    assert main(["report", "--sweep", "t_asha", "--out", str(out), "--tracking-uri", uri]) == 0
    assert "ASHA: not matched" in out.read_text()


@pytest.mark.ray
@pytest.mark.slow  # ~2 min on 2 idle cores: a 2-rank DeepSpeed trial run twice over
def test_deepspeed_trial_that_loses_a_rank_resumes_from_its_checkpoint(tiny_run, tmp_path, monkeypatch):
    """Rank 1 dies in epoch 1; Tune restarts the trial, Ray Train hands every rank the epoch-0 checkpoint (ZeRO-2
    shards of both ranks), and the run continues in the same MLflow run."""
    sweep = {**tiny_run, "name": "t_ds_resume", "train": {**tiny_run["train"], "epochs": 2, "threads": None},
             "engine": {"name": "deepspeed", "workers": 2, "zero_stage": 2}, "search": {"seed": {"grid": [0]}},
             "tune": {"max_failures": 1}}  # fmt: skip
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("HARNESS_HOOKS", FAULT["HARNESS_HOOKS"])
    monkeypatch.setenv("HARNESS_HOOK_FAULT", "1")
    assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    client = MlflowClient(uri)
    _, (run,) = _children(client, "t_ds_resume")
    assert run.info.status == "FINISHED" and run.data.tags["harness.workers"] == "2"
    for key, steps in (("val/top1", [0, 1]), ("train/loss", [0, 1]), ("model/params_total", [0]), ("test/top1", [2])):
        assert [s for s, _ in _history(client, run.info.run_id, key)] == steps, key
    train_runs = list((tmp_path / "ray").glob("*/train-*"))
    assert len(train_runs) == 1  # one Train run per trial, resumed rather than started again
    shards = {p.name for p in train_runs[0].glob("checkpoint_*/last/zero_pp_rank_*_optim_states.pt")}
    assert shards == {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}

    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(str(train_runs[0].parent)).trials
    assert trial.num_failures == 1  # the fault did happen, and the one retry finished the trial


def test_resume_without_a_resumable_sweep_says_why(tiny_run, tmp_path, capsys):
    path = _sweep_file(tiny_run, tmp_path, "t_noresume")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", str(path), "--tracking-uri", uri, "--resume"]
    assert main(args) == 2
    assert "--resume: no earlier run of sweep 't_noresume'" in capsys.readouterr().err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t_noresume").experiment_id
    client.create_run(exp, tags={"harness.sweep": "t_noresume", "harness.sweep_hash": "f" * 64})
    assert main(args) == 2
    assert "changed since it last ran (hash ffffffffffff" in capsys.readouterr().err
    spec = load_config(path)
    tags = {"harness.sweep": "t_noresume", "harness.sweep_hash": spec.source_hash, "harness.ray_experiment": "/nope"}
    client.create_run(exp, tags=tags)
    assert main(args) == 2
    assert "is not at /nope" in capsys.readouterr().err
