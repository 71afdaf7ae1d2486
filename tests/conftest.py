"""Fixtures shared by the trial, tracking, sweep and report tests: a tiny synthetic run, a temp cache, a finished
sweep."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from toy import refresh_all, write_toy_plugin

from harness.cli import main

# A few seconds per trial on 2 cores: 48 training clips, width 16, 2 layers, 1 epoch.
TINY_DATA = {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16}
TINY_BACKBONE = {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One data cache for the whole session, so the tiny dataset is generated once."""
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture
def tiny_run(cache) -> dict:
    """A complete one-run config dict (YAML spelling) that trains in seconds."""
    return {
        "name": "tiny",
        "seed": 0,
        "dataset": dict(TINY_DATA),
        "backbone": dict(TINY_BACKBONE),
        "method": {"name": "mbt", "fusion_layer": 1, "bottleneck_tokens": 2},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "threads": 1},
        "cache_dir": str(cache),
    }


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, cache):
    """Three trials on local Ray: two finish, one (lr = 1e30) fails with a NaN loss."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = {
        "name": "t_sweep",
        "dataset": {"name": "synthetic", "clips_train": 48, "clips_val": 16, "clips_test": 16},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2},
        "method": {"name": "late"},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "grad_clip": None},
        "cache_dir": str(cache),
        "search": {"variants": [
            {"method.name": ["late", "audio_only"], "train.lr": 1.0e-3},
            {"method.name": "video_only", "train.lr": 1.0e30},
        ]},
        "tune": {"max_concurrent_trials": 2},
    }  # fmt: skip
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    code = main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp / "ray")])
    return code, uri, tmp


@pytest.fixture(scope="session")
def toy_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return write_toy_plugin(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def toy(toy_dirs, monkeypatch, tmp_path):
    """Activate the toy plug-in and cards; yields a helper that writes YAML files into tmp_path."""
    site, cards = toy_dirs
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("HARNESS_DATASETS_DIR", str(cards))
    refresh_all()

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    yield write
    refresh_all()  # rescanned lazily after monkeypatch restores sys.path
