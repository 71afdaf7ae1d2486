"""AVSBench S4 layout: ``harness synth --layout avsbench`` -> ``harness prepare avsbench_s4`` -> a segmentation run."""

from __future__ import annotations

import csv

import pytest
import torch

from harness.cli import main
from harness.config import RunSpec
from harness.data.avsbench import IGNORE, AVSBenchConfig, AVSBenchDataset, list_videos
from harness.run.trial import run_trial


@pytest.fixture(scope="module")
def s4_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("avsbench")
    assert main(["synth", "--out", str(root), "--layout", "avsbench", "--clips", "24"]) == 0
    return root


def test_synth_writes_the_s4_layout(s4_root):
    with open(s4_root / "Single-source" / "s4_meta_data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 24
    base = s4_root / "Single-source" / "s4_data"
    for r in rows:
        name, split, cat = r["name"], r["split"], r["category"]
        frames = sorted(p.name for p in (base / "visual_frames" / split / cat / name).iterdir())
        masks = sorted(p.name for p in (base / "gt_masks" / split / cat / name).iterdir())
        assert frames == [f"{name}_{i}.png" for i in range(1, 6)]
        assert masks == ([f"{name}_1.png"] if split == "train" else frames)  # S4 train: the first frame only
        assert (base / "audio_wav" / split / cat / f"{name}.wav").is_file()


def test_prepare_then_run(s4_root, tmp_path):
    cache = tmp_path / "cache"
    sets = ["--set", "image_size=32", "--set", "n_mels=32", "--set", "n_frames=100"]
    assert main(["prepare", "avsbench_s4", "--root", str(s4_root), "--cache", str(cache), *sets]) == 0
    params = AVSBenchConfig(root=str(s4_root), cache=str(cache), image_size=32, n_mels=32, n_frames=100)
    data = AVSBenchDataset(params, cache)
    counts = {s: len(v) for s, v in list_videos(params).items()}
    assert {s: len(split) for s, split in data.splits.items()} == counts
    train, test = data.splits["train"].label, data.splits["test"].label  # (N, 5, 32, 32) uint8
    assert (train[:, 1:] == IGNORE).all() and (train[:, 0] <= 1).all()  # S4 train: frames 2..5 not annotated
    assert (test <= 1).all() and test.flatten(2).any(2).float().mean() > 0.5
    assert data.splits["train"].video.shape == (counts["train"], 5, 3, 32, 32)
    assert data.splits["train"].audio.shape == (counts["train"], 1, 32, 100)
    assert torch.isfinite(data.splits["val"].audio.float()).all()

    run = {
        "name": "avsbench_tiny",
        "seed": 0,
        "dataset": {"name": "avsbench_s4", "root": str(s4_root), "cache": str(cache), "image_size": 32, "n_mels": 32,
                    "n_frames": 100},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8,
                     "audio_patch": [16, 20]},
        "method": {"name": "mbt", "fusion_layer": 1, "bottleneck_tokens": 2},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "threads": 1},
        "cache_dir": str(cache),
    }  # fmt: skip
    final = run_trial(RunSpec.from_dict(run))  # the card's task: segmentation
    assert 0 <= final["test/miou"] <= 100 and 0 <= final["test/fscore"] <= 100
