"""synth -> prepare -> load for every layout, on real MP4 files; missing and corrupt files; --strict; resume of an
interrupted prepare; --workers; runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from harness.cli import main
from harness.config import ConfigError, RunSpec
from harness.data.synth_media import LAYOUTS
from harness.run.prepare import resolve_params
from harness.run.trial import run_trial

TINY = ["frames=2", "image_size=32", "resize=32", "n_mels=16", "target_frames=32", "val_fraction=0.4"]
TINY_PARAMS = dict(s.split("=") for s in TINY)


def _synth_prepare(tmp_path, layout: str, clips: int = 6, extra: tuple[str, ...] = ()):
    root, cache = tmp_path / "root", tmp_path / "cache"
    assert main(["synth", "--out", str(root), "--layout", layout, "--clips", str(clips)]) == 0
    sets = [a for s in (*TINY, *extra) for a in ("--set", s)]
    assert main(["prepare", layout, "--root", str(root), "--cache", str(cache), *sets]) == 0
    cls, params = resolve_params(layout, str(root), str(cache), list(TINY) + list(extra))
    return root, cache, cls, params


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synth_prepare_load(tmp_path, capsys, layout):
    root, cache, cls, params = _synth_prepare(tmp_path, layout, extra=("test_clips=2", "window_seconds=1.0"))
    out = capsys.readouterr().out
    assert "listed 6, found 6, decoded 6, missing 0, corrupt 0" in out
    ds = cls(params, tmp_path / "unused")
    assert ds.decoder.startswith(("pyav ", "torchcodec ")) and len(ds.fingerprint) == 16
    assert sum(len(s.records) for s in ds.splits.values()) == 6
    records = {r.id: r for s in ds.splits.values() for r in s.records}
    test = ds.splits["test"]
    assert len(test) == 2 * len(test.records)  # two views per test clip
    b = test.on_device(next(test.batches(4)))
    n = len(b["id"])
    assert b["id"][0] == b["id"][1]  # the views of one clip share its id
    assert b["video"].shape == (n, 2, 3, 32, 32) and b["video"].dtype == torch.float32
    # AVE's card uses LAVISH's front end: 10 one-second windows of target_frames each, side by side
    assert b["audio"].shape == (n, 1, 16, 320 if layout == "ave" else 32) and torch.isfinite(b["audio"]).all()
    assert b["audio_present"].all() and b["video_present"].all()
    assert b["audio"].std() > 0.05 and b["video"].std() > 0.05  # decoded content, not zeros
    label = b["label"]
    if layout == "audioset":
        assert label.shape == (n, 527) and label.dtype == torch.float32
        assert all(set(label[i].nonzero().flatten().tolist()) == set(records[c].label) for i, c in enumerate(b["id"]))
    elif layout == "ave":
        assert label.shape == (n, 10) and label.dtype == torch.int64 and ds.spec.num_classes == 29
        assert ((label == 28) | (label < 6)).all()  # background = 28, events among the synthetic classes
        assert all(label[i].tolist() == records[c].label for i, c in enumerate(b["id"]))
    elif layout == "epic_kitchens_100":
        assert set(label) == {"verb", "noun"} and label["verb"].shape == (n,)
        assert [(v, w) for v, w in zip(label["verb"].tolist(), label["noun"].tolist())] == [
            records[c].label for c in b["id"]
        ]
        assert ds.spec.heads == (("verb", 97), ("noun", 300))
    else:
        assert label.shape == (n,) and label.dtype == torch.int64
        assert label.tolist() == [records[c].label for c in b["id"]]
    n_train = len(ds.splits["train"])
    train = [x["id"] for x in ds.splits["train"].batches(2, shuffle=True, seed=3, drop_last=True)]
    assert n_train >= 1 and sum(map(len, train)) == (n_train - n_train % 2 if n_train >= 2 else n_train)


def test_missing_and_corrupt_files_are_counted_and_tagged(tmp_path, capsys):
    root, cache, cls, params = _synth_prepare(tmp_path, "ave", clips=8)
    recs = [r for r in cls.list_clips(params) if r.split == "train"]
    (root / recs[0].file).unlink()  # deleted
    data = (root / recs[1].file).read_bytes()
    (root / recs[1].file).write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["prepare", "ave", "--root", str(root), "--cache", str(cache), *sets]) == 0
    out = capsys.readouterr().out
    assert "reused 6 clips" in out
    assert "listed 8, found 7, decoded 6, missing 1, corrupt 1" in out
    manifest = json.loads((cls.cache_folder(params, tmp_path) / "manifest.json").read_text())
    assert manifest["counts"] == {"listed": 8, "found": 7, "decoded": 6, "missing": 1, "corrupt": 1, "short": 0}
    assert manifest["missing"] == [recs[0].id] and manifest["corrupt"] == [recs[1].id]
    assert recs[1].file in manifest["errors"][recs[1].id]

    # --strict fails naming the file; nothing prepared is lost
    assert main(["prepare", "ave", "--root", str(root), "--cache", str(cache), "--strict", *sets]) == 1
    assert str(root / recs[1].file) in capsys.readouterr().err

    class Tags:
        def start(self, info):
            self.tags = info["tags"]

        def report(self, metrics, step):
            pass

    rec = Tags()
    run = {"name": "t", "dataset": {"name": "ave", "root": str(root), "cache": str(cache), **TINY_PARAMS},
           "backbone": {"name": "tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "audio_patch": [16, 16]},
           "method": {"name": "vanilla", "fusion_layer": 1}, "task": {"scoring": "clip"},  # 2 frames: not 10 segments
           "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "threads": 1}}  # fmt: skip
    final = run_trial(RunSpec.from_dict(run), rec)  # completes on the 6 decoded clips
    assert rec.tags["harness.manifest_hash"] == manifest["hash"]
    assert rec.tags["harness.decoder"] == manifest["decoder"]
    assert rec.tags["harness.data_counts"] == "listed 8, found 7, decoded 6, missing 1, corrupt 1, short 0"
    assert 0 <= final["test/seg_acc"] <= 100

    # the same without a cache (dataset.cache: none): the same counts and lists, --strict the same failure
    none = [a for s in (*TINY, "cache=none") for a in ("--set", s)]
    capsys.readouterr()
    assert main(["prepare", "ave", "--root", str(root), *none]) == 0
    assert "listed 8, found 7, decoded 6, missing 1, corrupt 1" in capsys.readouterr().out
    assert main(["prepare", "ave", "--root", str(root), "--strict", *none]) == 1
    assert str(root / recs[1].file) in capsys.readouterr().err
    run["dataset"] = {**run["dataset"], "cache": "none"}
    final = run_trial(RunSpec.from_dict(run), rec)
    assert rec.tags["harness.data_counts"] == "listed 8, found 7, decoded 6, missing 1, corrupt 1, short 0"
    assert 0 <= final["test/seg_acc"] <= 100


KILL_AFTER_FIRST_SHARD = """
import sys
from pathlib import Path
from harness.data.prepare import prepare
from harness.run.prepare import resolve_params
cls, p = resolve_params("kinetics_sounds", sys.argv[1], sys.argv[2], sys.argv[3:])
prepare(cls.list_clips(p), Path(p.root), cls.cache_folder(p, "."), cls.settings(p), shard_clips=2)
"""


def test_an_interrupted_prepare_resumes_and_workers_make_the_same_cache(tmp_path, capsys):
    from harness.data.shards import Shard

    root, a, b = tmp_path / "root", tmp_path / "a", tmp_path / "b"
    assert main(["synth", "--out", str(root), "--layout", "kinetics_sounds", "--clips", "10"]) == 0
    cls, params = resolve_params("kinetics_sounds", str(root), str(a), list(TINY))
    folder = cls.cache_folder(params, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, str(root), str(a), *TINY],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    while not list(folder.glob("shard-*")) and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    assert not (folder / "manifest.json").exists()  # killed before the end
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.safetensors")}
    assert kept and not list(folder.glob("*.tmp*"))  # whole shards only
    sets = [x for s in TINY for x in ("--set", s)]
    capsys.readouterr()
    assert main(["prepare", "kinetics_sounds", "--root", str(root), "--cache", str(a), *sets]) == 0
    out = capsys.readouterr().out
    assert f"reused {2 * len(kept)} clips" in out and "listed 10, found 10, decoded 10" in out
    assert all(folder.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())  # finished shards untouched
    assert main(["prepare", "kinetics_sounds", "--root", str(root), "--cache", str(b), "--workers", "2", *sets]) == 0
    other = cls.cache_folder(params.model_copy(update={"cache": str(b)}), tmp_path)
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (folder, other))
    assert ma["hash"] == mb["hash"] and ma["counts"] == mb["counts"]  # resumed = uninterrupted, 2 workers = 1
    for cid in ma["clips"]:
        (sa, ra, _), (sb, rb, _) = ma["clips"][cid], mb["clips"][cid]
        x, y = Shard(folder / sa), Shard(other / sb)
        frames = list(range(x.n_frames(ra)))
        assert frames == list(range(y.n_frames(rb))) and x.info[ra] == y.info[rb]
        assert all(torch.equal(p, q) for p, q in zip(x.jpeg(ra, frames), y.jpeg(rb, frames)))  # the same JPEG bytes
        assert torch.equal(x.fbank(ra), y.fbank(rb))


def test_ave_scores_every_second_with_lavish_windows(tmp_path):
    """AVE as LAVISH runs it: 10 frames, 10 one-second windows, every method run on each (frame, window) pair."""
    root, cache, cls, params = _synth_prepare(tmp_path, "ave", clips=6, extra=("frames=10",))
    run = {"name": "t", "dataset": {"name": "ave", "root": str(root), "cache": str(cache), **TINY_PARAMS, "frames": 10},
           "backbone": {"name": "tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "audio_patch": [16, 16]},
           "method": {"name": "vanilla"}, "task": {"hidden": 8, "head_input": "concat", "loss": "bce_softmax"},
           "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "threads": 1}}  # fmt: skip
    spec = RunSpec.from_dict(run)
    assert spec.task.method_segments() == 10
    final = run_trial(spec)
    assert 0 <= final["test/seg_acc"] <= 100
    with pytest.raises(ConfigError, match="dataset.frames"):  # 2 frames cannot be 10 segments
        RunSpec.from_dict({**run, "dataset": {**run["dataset"], "frames": 2}})


def test_resume_keeps_prepared_shards_and_settings_key_the_folder(tmp_path, capsys):
    root, cache, cls, params = _synth_prepare(tmp_path, "kinetics_sounds", clips=4)
    folder = cls.cache_folder(params, tmp_path)
    shards = sorted(p.name for p in folder.glob("shard-*"))
    capsys.readouterr()
    again = cls.prepare(params, tmp_path)
    assert "reused 4 clips" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("shard-*")) == shards and again["counts"]["decoded"] == 4
    for cut in ({"frames": 3}, {"window_seconds": 2.0, "audio_seconds": 2.0}, {"test_clips": 3, "test_crops": 3},
                {"train_fraction": 0.5}, {"flip": True, "scale_jitter": (0.9, 1.33)}):  # fmt: skip
        assert cls.cache_folder(params.model_copy(update=cut), tmp_path) == folder  # cut at load time: same cache
    for stored in ({"cache_fps": 2.0}, {"jpeg_quality": 70}, {"cache_short_side": 40}, {"n_mels": 24}):
        assert cls.cache_folder(params.model_copy(update=stored), tmp_path) != folder  # what is stored: another


def test_unknown_dataset_and_bad_parameters_exit_2(tmp_path, capsys):
    assert main(["prepare", "avee", "--root", str(tmp_path)]) == 2
    assert "did you mean 'ave'" in capsys.readouterr().err
    assert main(["prepare", "ave", "--root", str(tmp_path), "--set", "frames=0"]) == 2
    assert "dataset.frames" in capsys.readouterr().err
    assert main(["prepare", "synthetic", "--root", str(tmp_path)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_trains_from_decoded_files(tmp_path, layout):
    root, cache, _, _ = _synth_prepare(tmp_path, layout, clips=10)
    run = {"name": "t", "dataset": {"name": layout, "root": str(root), "cache": str(cache), **TINY_PARAMS},
           "backbone": {"name": "tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "audio_patch": [16, 16]},
           "method": {"name": "vanilla", "fusion_layer": 1},
           "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "threads": 1}}  # fmt: skip
    final = run_trial(RunSpec.from_dict(run))
    assert any(k.startswith("test/") for k in final) and final["train/loss"] == final["train/loss"]
