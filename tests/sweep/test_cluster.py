"""A real Ray cluster: ``ray start --head`` on 127.0.0.1, then a 2-trial sweep through ``harness sweep --address``.

Ray maps 127.0.0.1 to this machine's own address (``resolve_ip_for_localhost``), so the head listens there; the
driver still connects through 127.0.0.1. The head runs with ``--block`` in a process group of its own, and the test
ends that group by its id (SIGTERM, then SIGKILL) rather than with ``ray stop``, which would stop every Ray instance
of this user on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main

pytestmark = pytest.mark.ray_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, head: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"the Ray head did not listen on 127.0.0.1:{port} within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(head: subprocess.Popen) -> None:
    """End the head's process group: gcs_server, raylet and the workers it started."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(wait)
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.parametrize("gpus", [0, 2], ids=["cpus", "two_fake_gpus"])
def test_two_trial_sweep_on_a_started_ray_head(tiny_run, tmp_path, monkeypatch, gpus):
    """With ``--num-gpus 2`` (Ray believes it; torch finds no CUDA and trains on the CPU) and no ``tune.resources.gpu``
    each trial holds one GPU by default: Ray sets its CUDA_VISIBLE_DEVICES to that GPU alone."""
    port = _free_port()
    # Ray 2.5x+ clusters started by `ray start` use token authentication: head, workers and this driver share a
    # token of the test's own (not ~/.ray/auth_token).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 108 characters
    log = tmp_path / "head.log"
    ray = Path(sys.executable).parent / "ray"
    cmd = [str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
           "--include-dashboard=false", "--temp-dir", temp, "--block", "--disable-usage-stats",
           "--num-gpus", str(gpus)]  # fmt: skip
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, head, log)
        sweep = {**tiny_run, "name": "t_cluster", "method": {"name": "late"},
                 "search": {"seed": {"grid": [0, 1]}}, "tune": {"max_concurrent_trials": 2}}  # fmt: skip
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        args = ["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--address"]
        assert main([*args, f"127.0.0.1:{port}"]) == 0
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("t_cluster").experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == 3 and len(children) == 2
        assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
        assert all(c.info.status == "FINISHED" and "test/top1" in c.data.metrics for c in children)
        # the trials ran in workers of this head (not in a local instance): their logs are in its session folder
        assert list((Path(temp) / "session_latest" / "logs").glob("worker-*.out"))
        # each trial held one of the two GPUs (which one depends on timing: a reused worker keeps its GPU)
        devices = [c.data.tags.get("harness.cuda_visible_devices", "-") for c in children]
        assert all(d in ("0", "1") for d in devices) if gpus else devices == ["-", "-"], devices
    finally:
        _stop(head)
