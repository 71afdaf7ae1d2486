"""End to end in a real browser: a finished sweep browsed in ``harness ui``, and the HTML report opened from disk.

Drives Debian's Chromium (``/usr/bin/chromium``) headless through Playwright; Playwright never downloads a browser
here. Screenshots are written under pytest's tmp dir and their paths printed (``pytest -s`` shows them).
Run with ``pytest -m e2e tests/e2e``; the default suite leaves these out.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main

CHROMIUM = Path("/usr/bin/chromium")
SWEEP = "t_e2e"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache) -> tuple[str, Path]:
    """A temporary MLflow store holding one finished 2-trial sweep (late and audio_only, 2 epochs)."""
    tmp = tmp_path_factory.mktemp("e2e")
    sweep = {
        "name": SWEEP,
        "dataset": {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2},
        "method": {"name": "late"},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16},
        "cache_dir": str(cache),
        "search": {"variants": [{"method.name": ["late", "audio_only"]}]},
        "tune": {"max_concurrent_trials": 2},
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    assert main(["sweep", str(tmp / "sweep.yaml"), "--tracking-uri", uri, "--storage", str(tmp / "ray")]) == 0
    return uri, tmp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(store) -> str:
    """``harness ui`` on a free port of 127.0.0.1, in its own process group; yields its base URL."""
    uri, tmp = store
    port = _free_port()
    log = open(tmp / "ui.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--tracking-uri", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server's workers share its group: one killpg ends them all
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, t0 = time.monotonic() + 120, time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"harness ui exited with {proc.returncode}:\n{(tmp / 'ui.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"harness ui did not answer on {base} in 120 s:\n{(tmp / 'ui.log').read_text()[-3000:]}")
            time.sleep(0.25)
        print(f"\nharness ui answered after {time.monotonic() - t0:.1f} s at {base}")
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def test_child_run_and_its_top1_in_the_mlflow_ui(store, ui, browser, tmp_path):
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SWEEP)
    children = {r.info.run_name: r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(
        "mlflow.parentRunId")}  # fmt: skip
    assert len(children) == 2

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{ui}/#/experiments")
    page.get_by_text("Model training", exact=True).click()  # MLflow 3 opens in its GenAI view
    page.get_by_role("link", name=SWEEP, exact=True).first.click()  # the experiment, found by name
    parent = page.get_by_role("row").filter(has=page.get_by_role("link", name=SWEEP, exact=True))
    parent.first.wait_for()
    parent.first.locator("button").first.click()  # expand the sweep's parent run: its trials are nested
    link = page.get_by_role("link", name=re.compile(r"^(late|audio_only)$"))  # named from what varies
    link.first.wait_for()
    name = link.first.inner_text().strip()
    assert name in children, f"{name!r} is not a child run; children: {sorted(children)}"
    link.first.click()

    page.get_by_text(name, exact=True).first.wait_for()
    cell = page.get_by_text("test/top1", exact=True).first
    cell.wait_for()
    row = page.get_by_role("row").filter(has=cell).first
    shown = row.inner_text().replace("test/top1", "").strip()
    expected = children[name].data.metrics["test/top1"]
    assert float(shown) == pytest.approx(expected, abs=0.01), f"UI shows {shown!r}, MLflow holds {expected}"
    row.scroll_into_view_if_needed()
    shot = tmp_path / "mlflow_child_run.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot of run {name} (test/top1 = {shown}): {shot}")
    assert shot.stat().st_size > 10_000


def test_parent_run_shows_each_methods_top1_and_gflops(store, ui, browser, tmp_path):
    """The page `harness ui` links to (the latest sweep's parent run) answers "which method is best at what cost"
    without choosing columns: its description holds the summary table, its metrics the same numbers."""
    uri, tmp = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SWEEP)
    parent = next(r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    link = re.search(r"latest sweep '\w+': (\S+)", (tmp / "ui.log").read_text())
    assert link and parent.info.run_id in link.group(1), (tmp / "ui.log").read_text()
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(60_000)
    page.goto(link.group(1).replace("http://127.0.0.1:", f"{ui.rsplit(':', 1)[0]}:"))
    page.get_by_text("late/test/top1", exact=True).first.wait_for()
    text = page.inner_text("body")
    m = parent.data.metrics
    for method in ("late", "audio_only"):
        assert method in text and f"{method}/gflops" in text
        assert f"{m[f'{method}/test/top1']:.1f}" in text and f"{m[f'{method}/gflops']:.4f}" in text, method
    shot = tmp_path / "mlflow_parent_run.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the sweep's parent run (its summary): {shot}")
    assert shot.stat().st_size > 10_000


def test_html_report_opens_from_disk(store, browser, tmp_path):
    uri, _ = store
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto(out.as_uri())
    table = page.locator("table#results")
    assert table.count() == 1
    headers = [h.strip() for h in table.locator("th").all_inner_texts()]
    assert headers[:2] == ["method", "fusion layer"] and "test top-1 ↑" in headers
    methods = {t.strip() for t in table.locator("tbody tr td:first-child").all_inner_texts()}
    assert methods == {"late", "audio_only"}
    img = page.locator("img").first
    assert img.evaluate("i => i.complete && i.naturalWidth") > 100  # the inlined figure decoded
    assert external == [], f"the report fetched external assets: {external}"
    shot = tmp_path / "report_html.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the HTML report: {shot}")
