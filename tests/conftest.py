"""Fixtures shared by the trial, tracking, sweep and report tests: a tiny synthetic run and a temp cache."""

from __future__ import annotations

import pytest

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
