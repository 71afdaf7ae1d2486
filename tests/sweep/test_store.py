"""The tracking path loses nothing: a failing MLflow write is retried in order, a store that stays down leaves its
writes in the journal of Tune's snapshot (a full file system, for real), and new stores are created under a lock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_interrupt import Driver, _runs, _sweep_file

from harness.cli import main
from harness.sweep.writer import StoreWriter


class FlakyStore:
    """A store that raises ENOSPC for its first ``failures`` writes, then keeps every op it is given, in order."""

    def __init__(self, failures: int):
        self.failures, self.applied = failures, []

    def apply(self, op: tuple) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.applied.append(op)


class Refusing(Exception):
    error_code = "INVALID_PARAMETER_VALUE"


def test_writer_retries_a_failing_store_in_order_and_keeps_the_backlog(capsys):
    store = FlakyStore(failures=3)
    writer = StoreWriter(store.apply, first_delay=0.05, max_delay=0.1)
    for i in range(5):
        writer.submit(("metrics", f"t{i}"))
    assert writer.drain(patience=30) == []
    assert store.applied == [("metrics", f"t{i}") for i in range(5)] and writer.retried == 3
    err = capsys.readouterr().err
    assert "MLflow write failed (OSError" in err and "writes again after 3 failed tries" in err

    down = FlakyStore(failures=10**6)  # never comes back: drain hands the queue back instead of waiting for ever
    writer = StoreWriter(down.apply, first_delay=0.05, max_delay=0.05)
    for i in range(3):
        writer.submit(("metrics", f"t{i}"))
    t0 = time.monotonic()
    backlog = writer.drain(patience=0.5)
    assert backlog == [("metrics", "t0"), ("metrics", "t1"), ("metrics", "t2")] and time.monotonic() - t0 < 5
    assert writer.drain(patience=0.5) == backlog  # still there, in order: nothing dropped

    store = FlakyStore(failures=0)
    writer = StoreWriter(store.apply)
    writer.resubmit(backlog)  # the next start writes the journal first
    assert writer.drain(patience=30) == [] and store.applied == backlog


def test_writer_does_not_retry_what_the_store_refuses(capsys):
    def apply(op):
        if op[0] == "bad":
            raise Refusing("param value too long")

    writer = StoreWriter(apply, first_delay=0.05)
    writer.submit(("bad", "t0"))
    writer.submit(("metrics", "t0"))
    assert writer.drain(patience=30) == [] and writer.retried == 0
    assert writer.refused == [(("bad", "t0"), "Refusing: param value too long")]


@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MiB tmpfs (needs root and mount(2); skipped otherwise)."""
    where = tmp_path / "store"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write ``folder/filler`` until the file system is full."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return path


@pytest.mark.ray
@pytest.mark.slow  # ~1 min alone: a sweep, then its resume, on a tmpfs
def test_store_on_a_full_disk_loses_no_trial(tiny_run, small_fs, tmp_path, capsys):
    """MLflow's SQLite file and artifacts on a tmpfs that is filled once the first trial is done: the second trial
    trains on, its writes fail and wait; the sweep ends saying so (exit 1), its Tune snapshot holding the writes.
    After space returns, `--resume` writes them: both runs FINISHED, every step once, no trial trained again."""
    path = _sweep_file(tiny_run, tmp_path, "t_full")
    uri, storage = f"sqlite:///{small_fs / 'mlflow.db'}", str(tmp_path / "ray")
    args = ["sweep", str(path), "--tracking-uri", uri, "--storage", storage]
    driver = Driver(args, small_fs, env={"HARNESS_STORE_PATIENCE_S": "3"})  # artifacts go to ./mlruns: the tmpfs
    try:
        driver.wait_for("  done", 240)
        filler = _fill(small_fs)
        code = driver.proc.wait(240)
    finally:
        driver.finish(30)
    out = driver.text
    assert code == 1, out[-3000:]
    assert "MLflow write failed" in out and "no trial is lost" in out, out[-3000:]
    assert f"when it works again: harness sweep {path} --resume" in out

    filler.unlink()
    capsys.readouterr()
    os.chdir(small_fs)  # the same artifact root as the first invocation
    try:
        assert main([*args, "--resume"]) == 0
    finally:
        os.chdir(tmp_path)
    out = capsys.readouterr().out
    assert "writing " in out and "MLflow writes kept by the interrupted sweep" in out, out
    client = MlflowClient(uri)
    (parent,), children = _runs(client, "t_full")
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.failed_trials"] == "0"
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags
        for key, steps in (("val/top1", [0, 1]), ("train/loss", [0, 1]), ("model/params_total", [0]),
                           ("test/top1", [2])):  # fmt: skip
            assert sorted(m.step for m in client.get_metric_history(c.info.run_id, key)) == steps, key
        assert {"curves.csv", "curves.png"} <= {a.path for a in client.list_artifacts(c.info.run_id)}

    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(parent.data.tags["harness.ray_experiment"]).trials
    assert {t.status for t in trials} == {"TERMINATED"} and all(t.num_failures == 0 for t in trials)


_OPEN = """
import os, sys, time
from harness.tracking import open_client
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
open_client(sys.argv[1]).search_experiments()
"""


def test_two_processes_opening_a_new_store_at_once_both_succeed(tmp_path):
    """MLflow's schema migration of a new SQLite file races (`table experiments already exists`, `Online migration
    expected to match one row`) unless one process at a time creates it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(1):  # the race shows on every try (3 of 3 before the lock)
        uri, go = f"sqlite:///{tmp_path / f'm{attempt}.db'}", tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN, uri, str(go)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        for p in procs:  # both have imported MLflow; then both open the store at the same moment
            assert p.stdout.readline().strip() == "ready", p.communicate()[1][-2000:]
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]


@pytest.mark.ray
@pytest.mark.slow  # ~1 min on 2 idle cores: two local Ray instances at once
def test_two_sweeps_started_at_once_on_a_new_store_both_finish(tiny_run, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    drivers = []
    for name in ("t_first", "t_second"):
        path = _sweep_file(tiny_run, tmp_path, name, seeds=(0,), epochs=1)
        (tmp_path / name).mkdir()
        drivers.append(Driver(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
                              tmp_path / name))  # fmt: skip
    codes = [d.finish(300) for d in drivers]
    assert codes == [0, 0], [d.text[-2000:] for d in drivers]
    client = MlflowClient(uri)
    for name in ("t_first", "t_second"):
        (parent,), (child,) = _runs(client, name)
        assert parent.info.status == child.info.status == "FINISHED"
