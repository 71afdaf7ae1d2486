"""The ``harness`` CLI: ls, validate (exit codes, every error at once, no Ray), help texts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import RUN, SWEEP

from harness.cli import build_parser, main
from harness.registry import METHODS

HARNESS = Path(sys.executable).parent / "harness"


def test_ls_methods_lists_descriptions_without_importing_torch():
    code = "import sys; from harness.cli import main; main(['ls', 'methods']); print(sorted(sys.modules))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    lines, modules = out.splitlines()[:-1], out.splitlines()[-1]
    assert [line.split()[0] for line in lines] == METHODS.names()  # test_registry pins the list itself
    assert "Attention Bottlenecks" in next(line for line in lines if line.split()[0] == "mbt")
    assert "'torch'" not in modules and "'pydantic'" not in modules
    assert elapsed < 5, elapsed


def test_ls_sweeps_reads_first_comment(tmp_path, monkeypatch, capsys):
    (tmp_path / "fusion_layer.yaml").write_text("# MBT vs vanilla over the fusion layer\nname: x\n")
    (tmp_path / "bare.yaml").write_text("name: y\n")
    monkeypatch.setenv("HARNESS_SWEEPS_DIR", str(tmp_path))
    assert main(["ls", "sweeps"]) == 0
    assert capsys.readouterr().out.splitlines() == ["bare", "fusion_layer  MBT vs vanilla over the fusion layer"]


def test_validate_ok_for_run_and_sweep(toy, capsys):  # noqa: F811
    run, sweep = toy("r.yaml", RUN), toy("s.yaml", SWEEP)
    assert main(["validate", str(run), str(sweep)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{run}: ok (run)", f"{sweep}: ok (sweep with 27 trials)"]
    assert main(["validate", str(sweep), "--set", "tune.num_samples=1", "--set", "seed=0"]) == 0
    assert capsys.readouterr().out.strip() == f"{sweep}: ok (sweep with 9 trials)"


def test_validate_reports_every_error_and_exits_2_without_ray(toy, toy_dirs):  # noqa: F811
    site, cards = toy_dirs
    bad = toy("bad.yaml", RUN.replace("name: toy", "name: toyy").replace("epochs: 2", "epochz: 2"))
    env = {**os.environ, "PYTHONPATH": str(site), "HARNESS_DATASETS_DIR": str(cards)}
    cmd = [sys.executable, "-X", "importtime", str(HARNESS), "validate", str(bad), "--set", "method.fusion_layer=13"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    report = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert report[0] == f"error: {bad} has 3 problems:"
    assert any(line.startswith("  dataset.name: unknown dataset 'toyy' (did you mean 'toy'?)") for line in report)
    assert any(line.startswith("  train.epochz: unknown key 'epochz' (did you mean 'epochs'?)") for line in report)
    assert any(line.startswith("  --set method.fusion_layer=13: 13 is out of range") for line in report)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "ray" not in imported and "mlflow" not in imported


def test_config_error_from_a_handler_exits_2(tmp_path, capsys):
    path = tmp_path / "cycle.yaml"
    path.write_text("include: cycle.yaml\n")
    assert main(["validate", str(path)]) == 2
    assert "include cycle: cycle.yaml -> cycle.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ls", "validate", "run", "sweep", "report", "ui", "eval"])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert f"harness {command}" in capsys.readouterr().out.split("examples:")[1]


def test_parser_wires_handler_arguments():
    args = build_parser().parse_args(
        ["sweep", "s.yaml", "--set", "a=1", "--set", "b=2", "--storage", "/d", "--address", "auto"]
    )
    assert (args.file, args.set, args.storage, args.address, args.tracking_uri) == (
        "s.yaml", ["a=1", "b=2"], "/d", "auto", None)  # fmt: skip
    args = build_parser().parse_args(["report", "--sweep", "x", "--out", "t.md", "--format", "csv"])
    assert (args.sweep, args.spec, args.out, args.format) == ("x", None, "t.md", "csv")
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["report", "--sweep", "x"])  # --out is required
    assert e.value.code == 2


def test_the_readmes_run_file_and_shipped_sweeps_validate(capsys):
    root = Path(__file__).resolve().parents[2]
    files = [root / "run.yaml", *sorted((root / "sweeps").glob("*.yaml"))]
    assert main(["validate", *map(str, files)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{root / 'run.yaml'}: ok (run)"
