"""Credentials in a tracking URI reach no param, tag, artifact or printed line: they go to MLflow's own
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and every URI that is shown or logged is redacted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_interrupt import Driver, _runs

from harness.tracking import redact, run_params, tracking_uri

PASSWORD = "s3cr3t-Pa55w0rd"


def test_redact_strips_credentials_from_every_uri_in_a_text():
    text = f"tracking: http://harness:{PASSWORD}@127.0.0.1:5000/x and postgresql://u:{PASSWORD}@db/mlflow, ok"
    assert redact(text) == "tracking: http://127.0.0.1:5000/x and postgresql://db/mlflow, ok"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert run_params({"tracking": {"uri": f"https://me:{PASSWORD}@host"}}) == {"tracking.uri": "https://host"}


def test_tracking_uri_moves_http_credentials_to_mlflows_variables(monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking_uri("https://me:p%40ss@mlflow.example.org/") == "https://mlflow.example.org/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "me" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert "p@ss" not in capsys.readouterr().err
    db = f"postgresql://u:{PASSWORD}@db/mlflow"  # SQLAlchemy needs them in the URI: kept, shown only redacted
    assert tracking_uri(db) == db


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server on 127.0.0.1 (its own SQLite file and artifact folder): its URL and files."""
    port, root = _free_port(), tmp_path / "server"
    root.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", root
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


@pytest.mark.ray
@pytest.mark.slow  # ~1 min alone: an MLflow server and a one-trial sweep
def test_a_password_in_tracking_uri_is_in_no_param_tag_artifact_or_printed_line(tiny_run, tmp_path, mlflow_server):
    host, server_files = mlflow_server
    sweep = {**tiny_run, "name": "t_secret", "method": {"name": "late"}, "search": {"seed": {"grid": [0]}},
             "tracking": {"uri": f"http://harness:{PASSWORD}@{host}"}}  # fmt: skip
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(sweep))
    driver = Driver(["sweep", str(path), "--storage", str(tmp_path / "ray")], tmp_path)
    assert driver.finish(300) == 0, driver.text[-3000:]
    assert PASSWORD not in driver.text and f"http://{host}" in driver.text  # printed without it

    client = MlflowClient(f"http://{host}")
    (parent,), (child,) = _runs(client, "t_secret")
    assert child.info.status == "FINISHED" and child.data.params["tracking.uri"] == f"http://{host}"
    for run in (parent, child):
        assert not [v for v in {**run.data.params, **run.data.tags}.values() if PASSWORD in v]
    artifacts = Path(client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path)))
    assert f"uri: http://{host}" in artifacts.read_text()  # the file's content, without the password
    for folder in (server_files, tmp_path / "ray"):  # the store (params, tags, artifacts), Tune's files: every byte
        for f in folder.rglob("*"):
            if f.is_file():
                assert PASSWORD.encode() not in f.read_bytes(), f
