"""A real plug-in package, installed: ``examples/harness-gmu`` (one method through the ``harness.methods`` entry point).

It is installed with pip into a folder of its own (the site-packages of these subprocesses, through ``PYTHONPATH``),
so the suite's own environment is left as it is. Then, as a user with the plug-in installed would: ``harness ls
methods`` lists it with its description, the plug-in's own tests (the harness's method contract on ``gmu``) and this
project's registry tests pass, and ``harness run`` trains it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "harness-gmu"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    site, source = tmp_path_factory.mktemp("plugin-site"), tmp_path_factory.mktemp("plugin-src") / "harness-gmu"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # builds there
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True, text=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def harness(*args: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_plugin_is_listed_with_its_description(plugin_env):
    out = harness("ls", "methods", env=plugin_env)
    assert out.returncode == 0, out.stderr
    line = re.search(r"^gmu\s+(.*)$", out.stdout, re.M)
    assert line and line.group(1) == "Gated multimodal unit on late fusion's two streams. (plug-in from harness-gmu)"
    assert re.search(r"^mbt\s+Attention Bottlenecks", out.stdout, re.M)  # the built-ins are still there


def test_the_plugins_contract_tests_and_the_registry_tests_pass_with_it_installed(plugin_env):
    tests = [str(PLUGIN / "tests"), str(ROOT / "tests" / "test_registry.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *tests], env=plugin_env,
                       cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    ran = re.findall(r"TestGMUContract::(\w+)\[gmu(?:-\w+)?\] PASSED", r.stdout)
    assert len(ran) == 8 and "test_missing_modalities_are_masked" in ran  # every contract check, both placeholders
    assert "test_registry.py::test_every_method_and_task_module_is_registered PASSED" in r.stdout


def test_the_plugin_trains_through_harness_run(plugin_env, tmp_path):
    tiny = ["dataset.clips_train=48", "dataset.clips_val=16", "dataset.clips_test=16", "backbone.embed_dim=16",
            "backbone.depth=2", "backbone.num_heads=2", "train.epochs=1", "train.batch_size=8", "train.threads=1",
            f"cache_dir={tmp_path / 'cache'}", "method.name=gmu"]  # fmt: skip
    sets = [a for s in tiny for a in ("--set", s)]
    out = harness("run", str(ROOT / "run.yaml"), *sets, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  env=plugin_env, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"test/top1=[\d.]+", out.stdout)
