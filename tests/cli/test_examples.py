"""Every example of `harness --help`, of each subcommand's help and of the README's "Using it" block runs at tiny
sizes.

The examples are read from the parsers and the README themselves, so a new one is run too (or must be given a
reason in SKIP). Each runs as a process in one scratch folder (``sweeps/``, ``reports/`` and ``run.yaml`` copied
there), in order: the README's `harness run` makes the run that `harness eval RUN_ID` scores, the sweeps make what
`harness report` reads. Training commands get TINY (48 clips, width 16, 2 layers, 1 epoch) and sweeps are narrowed
to one trial; all but the plain `harness ls KIND` are marked slow (each imports torch in a process of its own).
The examples that end in an error on purpose say so in their comment ("exit 2").
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.cli import EPILOG, build_parser

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset.clips_train=48", "dataset.clips_val=16", "dataset.clips_test=16", "backbone.embed_dim=16",
        "backbone.depth=2", "backbone.num_heads=2", "train.epochs=1", "train.batch_size=8"]  # fmt: skip
# A sweep narrowed to one trial (--set on its search axes) that its report spec can still draw: mbt at Lf = 1.
ONE_TRIAL = ["seed=0", "method.name=mbt", "method.fusion_layer=1", "method.bottleneck_tokens=4"]
# Examples that cannot run here, and why.
SKIP = {
    "--address": "needs a running Ray cluster",
    "/data/": "needs a real dataset on disk",
    "mbt_audioset_mini": "a paper's setting on its real dataset",
    "/fast/cache": "needs a real dataset on disk",
    "/shared/": "needs a cluster's shared storage",
    "3f2a9c0d41e84b6f9a1e2b7c5d6e8f90": "a made-up run id (RUN_ID is run instead)",
    ".harness/checkpoints/run-1a2b3c4d5e6f": "a made-up checkpoint folder",
    "--resume": "needs an interrupted sweep (tests/sweep/test_resume.py interrupts one)",
}


def _help_examples() -> list[str]:
    texts = [EPILOG]
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    texts += [p.epilog or "" for p in sub.choices.values()]
    return [ln.strip() for t in texts for ln in t.splitlines() if ln.strip().startswith("harness ")]


def _readme_examples() -> list[str]:
    block = ROOT.joinpath("README.md").read_text().split("## Using it", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("harness ")]


def examples() -> list[str]:
    """Every example once, split at `&&`, the README's first (it makes the runs the others need)."""
    out, seen = [], set()
    for line in [*_readme_examples(), *_help_examples()]:
        for part in line.split(" && "):
            if part.split("#")[0].strip() not in seen:
                seen.add(part.split("#")[0].strip())
                out.append(part.strip())
    return out


def _params():
    for ex in examples():
        reason = next((why for key, why in SKIP.items() if key in ex), None)
        words = ex.split("#")[0].split()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if words[1] != "ls" or len(words) > 3:  # each imports torch in a process of its own: seconds to minutes
            marks.append(pytest.mark.slow)
        yield pytest.param(ex, marks=marks, id=ex.split("#")[0].strip())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache) -> dict:
    tmp = tmp_path_factory.mktemp("examples")
    for name in ("sweeps", "reports"):
        shutil.copytree(ROOT / name, tmp / name)
    shutil.copy(ROOT / "run.yaml", tmp / "run.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "HARNESS_CACHE": str(cache)}  # fmt: skip
    return {"tmp": tmp, "env": env, "run_id": None}


def command(example: str, ws: dict) -> tuple[list[str], int]:
    """The example as argv at tiny sizes, and the exit status it must end with."""
    code = 2 if "exit 2" in example else 0
    text = example.split("#")[0].replace("/tmp/ave", str(ws["tmp"] / "ave"))
    words = text.split()[1:]
    if "RUN_ID" in words:
        words[words.index("RUN_ID")] = ws["run_id"]
    if words[0] in ("run", "sweep") and "--dry-run" not in words and code == 0:
        sets = TINY + (ONE_TRIAL if words[0] == "sweep" and "--resume" not in words else [])
        words += [w for s in sets for w in ("--set", s)]
    if words[0] == "sweep":
        words += ["--storage", str(ws["tmp"] / "ray")]
    return [sys.executable, "-m", "harness.cli", *words], code


def _serve(argv: list[str], ws: dict) -> int:
    """`harness ui`: it must serve its page; then it is stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [*argv[: argv.index("--port") + 1], str(port), *argv[argv.index("--port") + 2 :]]
    proc = subprocess.Popen(argv, cwd=ws["tmp"], env=ws["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return 0 if r.status == 200 else r.status
            except OSError:
                if proc.poll() is not None:
                    return proc.returncode or 1
                time.sleep(1)
        return 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("example", list(_params()))
def test_example_runs(example: str, workspace: dict):
    argv, code = command(example, workspace)
    if argv[3] == "eval" and workspace["run_id"] is None:
        pytest.skip("no `harness run` example ran before it")
    if argv[3] == "ui":
        assert _serve(argv, workspace) == 0
        return
    done = subprocess.run(argv, cwd=workspace["tmp"], env=workspace["env"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert done.returncode == code, f"{' '.join(argv[3:])}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if argv[3] == "run" and (m := re.search(r"logged to MLflow run (\w+)", done.stdout)):
        workspace["run_id"] = m.group(1)


def test_every_example_is_run_or_has_a_reason():
    found = examples()
    assert len(found) >= 25 and any("ls methods" in e for e in found) and any("README" or e for e in found)
    for ex in found:
        assert ex.split()[1] in build_parser()._actions[-1].choices, ex  # a real subcommand
