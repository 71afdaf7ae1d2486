"""Stopping on a signal: SIGINT/SIGTERM of `harness sweep` and `harness run` end resumably (exit 130/143), with no run
left RUNNING, a report that says the sweep is incomplete, and `--resume` finishing it with every step logged once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main

CLI = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"]


def _sweep_file(tiny_run: dict, tmp_path: Path, name: str, seeds=(0, 1), epochs: int = 2) -> Path:
    sweep = {**tiny_run, "name": name, "method": {"name": "late"}, "train": {**tiny_run["train"], "epochs": epochs},
             "search": {"seed": {"grid": list(seeds)}}, "tune": {"max_concurrent_trials": 1}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _runs(client: MlflowClient, name: str) -> tuple[list, list]:
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])  # fmt: skip


def session_processes(sid: int) -> list[tuple[int, str]]:
    """Processes of session ``sid`` (a driver started with ``start_new_session``: it and what it started)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append((int(pid), Path(f"/proc/{pid}/comm").read_text().strip()))
        except (OSError, IndexError, ValueError):
            continue
    return out


class Driver:
    """`harness ARGS` in a subprocess of its own session; its output is collected, ``wait_for`` a line."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, start: str, timeout: float) -> None:
        with self._seen:
            ok = self._seen.wait_for(lambda: any(ln.startswith(start) for ln in self.lines), timeout)
        assert ok, self.text[-3000:]

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            try:  # whatever is left of it (nothing, if the test passes)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.ray
def test_sigint_after_the_first_trial_stops_resumably_and_resume_completes(tiny_run, tmp_path, capsys):
    """SIGINT once the first trial is done: exit 130 with the resume line, nothing RUNNING, the parent and the
    interrupted trial KILLED, no Ray process left; the report says the sweep is incomplete; `--resume` finishes it,
    each metric at each step once, and the report no longer says so."""
    path = _sweep_file(tiny_run, tmp_path, "t_sigint")
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "ray")
    args = ["sweep", str(path), "--tracking-uri", uri, "--storage", storage]
    driver = Driver(args, tmp_path)
    try:
        driver.wait_for("  done", 240)
        driver.proc.send_signal(signal.SIGINT)
        code = driver.proc.wait(120)
        time.sleep(1.0)
        left = session_processes(driver.proc.pid)
    finally:
        driver.finish(30)
    out = driver.text
    assert code == 130, out[-3000:]
    assert f"1 finished, 1 unfinished: harness sweep {path} --resume" in out, out[-3000:]
    assert left == [], left  # no Ray process outlives the driver

    client = MlflowClient(uri)
    (parent,), children = _runs(client, "t_sigint")
    assert parent.info.status == "KILLED" and parent.data.tags["harness.interrupted"] == "true"
    assert parent.data.tags["harness.num_trials"] == "2"
    logged = Path(client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path)))
    assert logged.read_text() == path.read_text()  # the file's content, not its path
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert [c.data.params["seed"] for c in children if c.info.status == "FINISHED"] == ["0"]
    for c in children:
        if c.info.status != "FINISHED":
            assert c.info.status == "KILLED" and c.data.tags["harness.interrupted"] == "true"

    report = tmp_path / "report.md"
    capsys.readouterr()
    assert main(["report", "--sweep", "t_sigint", "--out", str(report), "--tracking-uri", uri]) == 0
    assert "INCOMPLETE: sweep `t_sigint` is interrupted: 1 of 2 trials finished; missing: " in report.read_text()
    assert "warning: INCOMPLETE" in capsys.readouterr().err

    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "done  seed=0" not in out and out.count("  done") == 1, out
    (parent,), children = _runs(client, "t_sigint")
    assert parent.info.status == "FINISHED" and "harness.interrupted" not in parent.data.tags
    assert len(children) == 2 and sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    for c in children:
        assert c.info.status == "FINISHED" and "harness.interrupted" not in c.data.tags
        for key, steps in (("val/top1", [0, 1]), ("train/loss", [0, 1]), ("model/params_total", [0]),
                           ("test/top1", [2])):  # fmt: skip
            assert sorted(m.step for m in client.get_metric_history(c.info.run_id, key)) == steps, key
    assert main(["report", "--sweep", "t_sigint", "--out", str(report), "--tracking-uri", uri]) == 0
    assert "INCOMPLETE" not in report.read_text()


@pytest.mark.ray
@pytest.mark.slow  # ~40 s alone: a local Ray sweep stopped twice
def test_sigterm_twice_stops_the_sweep_at_once(tiny_run, tmp_path):
    """SIGTERM, then again right away: exit 143 without waiting for Tune's last snapshot; the runs are KILLED."""
    path = _sweep_file(tiny_run, tmp_path, "t_sigterm", seeds=(0,), epochs=30)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = Driver(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")], tmp_path)
    try:
        driver.wait_for("sweep 't_sigterm': 1 trials", 120)
        time.sleep(8)  # the trial is training
        driver.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        driver.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = driver.proc.wait(60)
        seconds = time.monotonic() - t0
    finally:
        driver.finish(30)
    assert code == 143, driver.text[-3000:]
    assert "SIGTERM: stopping at the next safe point (a sweep: after the running trials are saved)" in driver.text
    assert seconds < 20, seconds  # Ray's shutdown, not the trial's 30 epochs
    client = MlflowClient(uri)
    (parent,), children = _runs(client, "t_sigterm")
    assert parent.info.status == "KILLED"
    assert all(c.info.status == "KILLED" for c in children)


def test_harness_run_stopped_by_sigterm_is_killed_not_failed(tiny_run, tmp_path):
    """`harness run` on SIGTERM after its first epoch: exit 143, the run KILLED (not FAILED), and the line that says
    how to resume it."""
    tiny_run["train"].update(epochs=40)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = Driver(["run", str(path), "--tracking-uri", uri], tmp_path)
    folder = tmp_path / ".harness" / "checkpoints"
    try:
        deadline = time.time() + 180
        while not list(folder.glob("*/state.pt")) and time.time() < deadline:
            time.sleep(0.2)
        driver.proc.send_signal(signal.SIGTERM)
        code = driver.proc.wait(60)
    finally:
        driver.finish(30)
    assert code == 143, driver.text[-3000:]
    assert "stopped by SIGTERM: stopped after epoch" in driver.text
    assert f"continue with: harness run {path} --resume" in driver.text
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["harness.interrupted"] == "true"
    assert "harness.error" not in run.data.tags
