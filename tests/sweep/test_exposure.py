"""Nothing of the harness listens beyond loopback: a local sweep's Ray sockets (`ss -ltnp`), `harness ui` without
--allow-remote; and no Ray process outlives a driver killed with SIGKILL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
from test_interrupt import Driver, _sweep_file, session_processes

from harness.cli import main

LOOPBACK = ("127.", "[::ffff:127.", "[::1]")


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address:port, process) of every TCP socket that one of ``pids`` listens on, from ``ss -ltnpH``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        owners = {int(p.split("=")[1]) for p in fields[-1].split(",") if p.startswith("pid=")}
        if owners & pids:
            found.append((fields[3], fields[-1]))
    return found


@pytest.mark.ray
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_a_local_sweep_listens_on_loopback_only_and_dies_with_its_driver(tiny_run, tmp_path):
    path = _sweep_file(tiny_run, tmp_path, "t_ports", seeds=(0,), epochs=20)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = Driver(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")], tmp_path)
    try:
        driver.wait_for("sweep 't_ports': 1 trials", 180)
        time.sleep(5)  # the trial's worker is up and training
        procs = session_processes(driver.proc.pid)
        sockets = listening({pid for pid, _ in procs} | {driver.proc.pid})
        assert {"gcs_server", "raylet"} <= {name for _, name in procs}, procs
        assert len(sockets) >= 3, (sockets, procs)  # GCS, raylet, the workers: there is something to check
        wide = [s for s in sockets if not s[0].startswith(LOOPBACK)]
        assert wide == [], wide

        driver.proc.send_signal(signal.SIGKILL)  # no cleanup of its own: the watchdog ends Ray's processes
        driver.proc.wait(30)
        deadline = time.time() + 15
        while (left := session_processes(driver.proc.pid)) and time.time() < deadline:
            time.sleep(0.5)
        assert left == [], left
    finally:
        driver.finish(30)


def test_ui_refuses_a_remote_host_without_allow_remote(capsys):
    assert main(["ui", "--host", "0.0.0.0", "--port", "5999"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 would show anyone who can reach this machine every experiment" in err
    assert "--allow-remote" in err
