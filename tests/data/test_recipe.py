"""The training recipe on real MP4 files: per-epoch windows and crops, seeded draws, disjoint ranks, untouched eval,
test views, short clips, sweeps without a new prepare, and the clear errors of odd layouts."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from oddmedia import write

from harness.api import DatasetError
from harness.cli import main
from harness.run.prepare import resolve_params

# The AVE layout's MP4s under MBT-style windows: one spectrogram of the view's audio (not LAVISH's 10 per-second
# windows), scored per clip.
SETS = ["frames=3", "image_size=32", "resize=40", "n_mels=16", "target_frames=64", "cache_fps=4", "val_fraction=0.4",
        "window_seconds=2.0", "audio_seconds=2.0", "segment_windows=0"]  # fmt: skip
AUG = ["random_crop=true", "scale_jitter=[0.8,1.25]", "flip=true", "colour_jitter=0.8", "colour_drop=0.2",
       "spec_freq_masks=1", "spec_freq_width=6", "spec_time_masks=2", "spec_time_width=8"]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """An AVE layout of 10 clips, one of them cut to 3 s, prepared once."""
    tmp = tmp_path_factory.mktemp("recipe")
    root, cache = tmp / "root", tmp / "cache"
    assert main(["synth", "--out", str(root), "--layout", "ave", "--clips", "10"]) == 0
    cls, params = resolve_params("ave", str(root), str(cache), SETS)
    short = next(r for r in cls.list_clips(params) if r.split == "train")
    write(root / short.file, n=24, fps=8, size=(48, 64))  # 3 s of a 10-s clip
    assert (
        main(["prepare", "ave", "--root", str(root), "--cache", str(cache), *[a for s in SETS for a in ("--set", s)]])
        == 0
    )
    return root, cache, short.id


def _data(prepared, *extra):
    from harness.data.formats import AVEDataset

    root, cache, _ = prepared
    _, params = resolve_params("ave", str(root), str(cache), [*SETS, *extra])
    return AVEDataset(params, cache)


def _epoch(split, seed, shard=None):
    return list(split.batches(2, shuffle=True, seed=seed, drop_last=False, shard=shard))


def test_epochs_differ_a_seed_reproduces_them_and_eval_is_untouched(prepared):
    ds = _data(prepared, *AUG)
    train = ds.splits["train"]
    cid = train.records[0].id
    plans = {seed: train.plan((0, seed, 0, 0)) for seed in (1, 2, 3)}
    assert len({(tuple(p.frames), p.crop, p.flip, p.audio) for p in plans.values()}) == 3  # per epoch another cut
    assert train.plan((0, 2, 0, 0)) == plans[2]  # same (seed, epoch, clip): the same draw
    a, b = _epoch(train, 7), _epoch(train, 7)
    for x, y in zip(a, b):
        assert x["id"] == y["id"] and torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
        assert torch.equal(x["colour"], y["colour"])
    one = {i: torch.cat([v["video"][k : k + 1] for v in _epoch(train, s) for k, j in enumerate(v["id"]) if j == cid])
           for i, s in enumerate((1, 2))}  # fmt: skip
    assert not torch.equal(one[0], one[1])  # two epochs see different windows/crops of the same clip
    on = ds.splits["train"].on_device(a[0])
    assert on["video"].dtype == torch.float32 and "colour" not in on and torch.isfinite(on["video"]).all()
    plain = _data(prepared)  # no augmentation: eval is the same with and without the recipe
    for split in ("val", "test"):
        for x, y in zip(ds.splits[split].batches(4), plain.splits[split].batches(4)):
            assert "colour" not in x and x["id"] == y["id"]
            assert torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
    v = ds.splits["val"].plan((0, None, 0, 0))
    assert not v.flip and v.colour is None and not v.freq_masks and not v.time_masks


def test_ranks_see_disjoint_clips_whose_union_is_the_epoch(prepared):
    train = _data(prepared, *AUG).splits["train"]
    whole = [i for b in train.batches(4, shuffle=True, seed=5, drop_last=True) for i in b["id"]]
    parts = [[i for b in train.batches(4, shuffle=True, seed=5, drop_last=True, shard=(r, 2)) for i in b["id"]]
             for r in range(2)]  # fmt: skip
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(whole)
    by_rank = {i: v for r in range(2) for b in train.batches(4, True, 5, True, (r, 2))
               for i, v in zip(b["id"], b["video"])}  # fmt: skip
    single = {i: v for b in train.batches(4, True, 5, True) for i, v in zip(b["id"], b["video"])}
    assert all(torch.equal(by_rank[i], single[i]) for i in whole)  # a rank draws what one process would


def test_loader_workers_give_the_same_batches(prepared):
    a = _epoch(_data(prepared, *AUG).splits["train"], 3)
    b = _epoch(_data(prepared, *AUG, "loader_workers=2").splits["train"], 3)
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b))


def test_test_views_and_sync(prepared):
    ds = _data(prepared, "test_clips=2", "test_crops=3")
    test = ds.splits["test"]
    assert len(test) == 6 * len(test.records)
    b = next(test.batches(6))
    assert len(set(b["id"])) == 1 and b["video"].shape == (6, 3, 3, 32, 32)
    crops = {test.plan((0, None, t, s)).crop for t in range(2) for s in range(3)}
    assert len(crops) == 3  # 3 crops along the long side, shared by the 2 windows
    train = ds.splits["train"]
    p = ds.params
    sync = [train.plan((0, s, 0, 0)) for s in range(5)]
    for v in sync:  # the audio window (10-ms columns) centred on the video window, whose middle frame is its centre
        assert abs((v.audio[0] + v.audio[1] / 2) / 100 - (v.frames[1] + 0.5) / p.cache_fps) <= 0.5 / p.cache_fps + 0.01
    free = _data(prepared, "sync=false").splits["train"]
    assert any(abs(free.plan((0, s, 0, 0)).audio[0] - sync[s].audio[0]) > 50 for s in range(5))


def test_short_clip_is_flagged_and_padded_not_frozen(prepared):
    root, cache, short_id = prepared
    (m,) = cache.glob("*/manifest.json")
    manifest = json.loads(m.read_text())
    assert manifest["counts"]["short"] == 1 and abs(manifest["short"][short_id] - 3.0) < 1e-6
    ds = _data(prepared, "window_seconds=6.0", "audio_seconds=6.0", "frames=6")
    train = ds.splits["train"]
    i = next(k for k, r in enumerate(train.records) if r.id == short_id)
    v = train.plan((i, None, 0, 0))
    assert v.frames == [2, 6, 10, -1, -1, -1]  # 3 s of media in a 6-s window (frames at 0.5, 1.5, ... s): padding
    x = train.on_device({"video": train.sample((i, None, 0, 0))["video"][None]})["video"]
    assert x[0, 3:].abs().max() < 0.01 and x[0, :3].abs().max() > 0.1  # padded with the mean, not the last frame
    loop = _data(prepared, "window_seconds=6.0", "audio_seconds=6.0", "frames=6", "short_clips=loop")
    assert loop.splits["train"].plan((i, None, 0, 0)).frames == [2, 6, 10, 2, 6, 10]
    skip = _data(prepared, "short_clips=skip")
    assert short_id not in [r.id for r in skip.splits["train"].records]


def test_sweeps_over_window_and_fraction_reuse_the_cache(prepared):
    root, cache, _ = prepared
    folders = {str(_data(prepared, f"window_seconds={w}", f"audio_seconds={w}", "frames=2").manifest["hash"])
               for w in (2.0, 4.0, 6.0, 8.0)}  # fmt: skip
    assert len(folders) == 1 and len(list(cache.glob("*/manifest.json"))) == 1  # one prepare for every window
    n = {f: len(_data(prepared, f"train_fraction={f}").splits["train"]) for f in (0.3, 0.6, 1.0)}
    assert n[0.3] <= n[0.6] <= n[1.0]
    small = {r.id for r in _data(prepared, "train_fraction=0.6").splits["train"].records}
    assert {r.id for r in _data(prepared, "train_fraction=0.3").splits["train"].records} <= small  # nested


def test_clear_errors_for_odd_settings_and_layouts(prepared, tmp_path, capsys):
    with pytest.raises(DatasetError, match="split 'train' is empty.*train_fraction=1e-06"):
        _data(prepared, "train_fraction=0.000001")
    vgg = tmp_path / "vgg"
    assert main(["synth", "--out", str(vgg), "--layout", "vggsound", "--clips", "3"]) == 0
    tiny = ["frames=2", "image_size=32", "resize=32", "n_mels=16", "target_frames=32", "val_fraction=0"]
    backbone = {"name": "tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "audio_patch": [16, 16]}
    dataset = {"name": "vggsound", "root": str(vgg), "cache": str(tmp_path / "vc"), **dict(s.split("=") for s in tiny)}
    run = {"name": "t", "dataset": dataset, "method": {"name": "vanilla"}, "train": {"epochs": 1}, "backbone": backbone}
    (tmp_path / "run.yaml").write_text(json.dumps(run))
    capsys.readouterr()
    assert main(["run", str(tmp_path / "run.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 1
    err = capsys.readouterr().err
    assert "split 'val' is empty" in err and "val_fraction=0" in err and "Traceback" not in err
    root, cache, _ = prepared
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match="central 12%"):
        resolve_params("vggsound", str(root), None, ["image_size=32"])  # the card's resize=256 kept
    with pytest.raises(ConfigError, match="more than cache_fps"):
        _data(prepared, "window_seconds=0.5")
    ks = tmp_path / "ks"
    assert main(["synth", "--out", str(ks), "--layout", "kinetics_sounds", "--clips", "6"]) == 0
    first = sorted((ks / "train").glob("*/*.mp4"))[0]
    (first.parent / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS sidecar
    extra = ks / "test" / "not_in_train"
    extra.mkdir(parents=True)
    shutil.copy(first, extra / "x.mp4")
    cls, params = resolve_params("kinetics_sounds", str(ks), str(tmp_path / "c"), ["frames=2", "image_size=32",
                                 "resize=32", "n_mels=16", "target_frames=32", "extensions=['.mp4']"])  # fmt: skip
    with pytest.warns(UserWarning, match="1 clips left out.*test/not_in_train"):
        records = cls.list_clips(params)
    assert not any(r.file.split("/")[-1].startswith("._") for r in records)
    video = sorted((vgg / "video").glob("*.mp4"))[0]
    video.rename(video.with_suffix(".webm"))  # a .webm where the card's video_path says .mp4
    capsys.readouterr()
    sets = [a for x in tiny for a in ("--set", x)]
    assert main(["prepare", "vggsound", "--root", str(vgg), "--cache", str(tmp_path / "vc"), *sets]) == 0
    out = capsys.readouterr().out
    assert "missing 1" in out and "hint: 1 missing files exist with another extension" in out
    assert f"but video/{video.stem}.webm exists" in out


def test_tiny_window_sweep_trains_with_every_augmentation(prepared):
    """MBT's sampling-window sweep in miniature (t = 2, 4 s) on real MP4s, every augmentation on, one cache."""
    from harness.config import RunSpec
    from harness.run.trial import run_trial

    root, cache, _ = prepared
    data = {"name": "ave", "root": str(root), "cache": str(cache), **dict(s.split("=", 1) for s in SETS),
            "random_crop": True, "scale_jitter": [0.8, 1.25], "flip": True, "colour_jitter": 0.8, "colour_drop": 0.2,
            "spec_freq_masks": 1, "spec_freq_width": 6, "spec_time_masks": 2, "spec_time_width": 8, "sync": False,
            "frames": 2, "test_crops": 3, "test_clips": 2, "train_fraction": 0.9}  # fmt: skip
    results = []
    for window in (2.0, 4.0):
        run = {"name": "t", "dataset": {**data, "window_seconds": window, "audio_seconds": window},
               "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "audio_patch": [16, 16],
                            "drop_path": 0.1},
               "method": {"name": "mbt", "fusion_layer": 1}, "task": {"scoring": "clip"},
               "train": {"epochs": 2, "batch_size": 2, "eval_batch_size": 6, "threads": 1, "mixup_alpha": 0.5,
                         "modality_dropout": 0.2}}  # fmt: skip
        results.append(run_trial(RunSpec.from_dict(run)))
    for final in results:
        assert math.isfinite(final["train/loss"]) and 0 <= final["test/seg_acc"] <= 100
    assert len(list(cache.glob("*/manifest.json"))) == 1  # both windows cut from the one prepared cache


def test_media_files_serve_the_cache_views_within_jpeg_tolerance(prepared):
    """``cache: none``: the same probe counts, the same draws and the same frames as the cache but for its JPEG."""
    cached, media = _data(prepared, *AUG), _data(prepared, *AUG, "cache=none", "loader_workers=2")
    assert media.manifest["counts"] == cached.manifest["counts"] and media.manifest["short"] == cached.manifest["short"]
    for split in ("train", "val", "test"):
        a, b = cached.splits[split], media.splits[split]
        assert [r.id for r in a.records] == [r.id for r in b.records]
        assert all(a.plan(item) == b.plan(item) for item in a.items(True, 7))  # the same windows, crops, masks
        for x, y in zip(_epoch(a, 7), _epoch(b, 7)):
            assert x["id"] == y["id"] and torch.equal(x["audio_present"], y["audio_present"])
            mse = (x["video"].float() - y["video"].float()).pow(2).mean().item()
            assert 10 * math.log10(255**2 / mse) > 30  # JPEG (quality 90) of small noisy frames
            assert (x["audio"] - y["audio"]).abs().max() < 0.01  # the cache's log-mel is float16
    assert media.provenance()["harness.decoder"] == cached.provenance()["harness.decoder"]
    assert media.fingerprint != cached.fingerprint  # another source: another manifest hash
    index = next((prepared[1] / "media-index").rglob("*.json"))
    assert len(json.loads(index.read_text())) == sum(len(s.records) for s in media.splits.values())
