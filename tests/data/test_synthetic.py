"""The synthetic dataset: shapes, determinism, cache, and the synchrony it is built on."""

from __future__ import annotations

import torch

from harness.data.synthetic import SyntheticConfig, SyntheticDataset, _event_sets, generate, load_or_generate

SMALL = dict(clips_train=24, clips_val=8, clips_test=8)


def test_shapes_labels_and_determinism():
    cfg = SyntheticConfig(**SMALL)
    a, b = generate(cfg), generate(cfg)
    tr = a["train"]
    assert tr["video"].shape == (24, cfg.frames, 3, cfg.image_size, cfg.image_size) and tr["video"].dtype == torch.uint8
    assert tr["audio"].shape == (24, 1, cfg.n_mels, cfg.n_frames)
    assert int(tr["label"].max()) < cfg.colours * cfg.timbres and int(tr["label"].min()) >= 0
    for split in a:
        for key in a[split]:
            assert torch.equal(a[split][key], b[split][key]), (split, key)
    other = generate(SyntheticConfig(**SMALL, seed=1))
    assert not torch.equal(a["train"]["video"], other["train"]["video"])


def test_distractors_never_flash_with_the_sounding_object():
    cfg = SyntheticConfig(clips_train=512, clips_val=8, clips_test=8, distractors=2)
    events = _event_sets(512, cfg, torch.Generator().manual_seed(0))  # (n, K, slots)
    assert events.any(dim=2).all(), "every object flashes at least once"
    assert not (events[:, 0:1] & events[:, 1:]).any(), "distractors flash only where the sounding object does not"
    # same distribution of event counts for the sounding object and a distractor: no unimodal tell
    n0, n1 = events[:, 0].sum(1).float().mean(), events[:, 1].sum(1).float().mean()
    assert abs(n0 - n1) < 0.25


def test_audio_bursts_follow_the_sounding_objects_flashes():
    cfg = SyntheticConfig(clips_train=64, clips_val=8, clips_test=8, noise=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    # regenerate the train split's draws in generate()'s order to get its event sets
    torch.rand(64, cfg.colours, generator=g), torch.rand(64, cfg.shapes, generator=g)
    torch.randint(0, cfg.timbres, (64,), generator=g)
    events = _event_sets(64, cfg, g)[:, 0]  # (n, slots)
    audio = generate(cfg)["train"]["audio"].float()[:, 0]  # (n, mels, frames)
    per_slot = cfg.n_frames // cfg.slots
    energy = audio[..., : per_slot * cfg.slots].reshape(64, cfg.n_mels, cfg.slots, per_slot).mean(dim=(1, 3))
    loud = energy > energy.mean(dim=1, keepdim=True)
    assert (loud == events).float().mean() > 0.95


def test_cache_is_keyed_by_parameters(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    load_or_generate(cfg, tmp_path)
    files = list((tmp_path / "synthetic").glob("*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    ds = SyntheticDataset(cfg, tmp_path)  # second use: loaded, not regenerated
    assert files[0].stat().st_mtime_ns == stamp
    assert len(ds.splits["train"]) == 24 and ds.spec.num_classes == cfg.colours * cfg.timbres
    load_or_generate(SyntheticConfig(**SMALL, noise=0.2), tmp_path)
    assert len(list((tmp_path / "synthetic").glob("*.safetensors"))) == 2


def test_batches_follow_the_sample_contract(tmp_path):
    ds = SyntheticDataset(SyntheticConfig(**SMALL), tmp_path)
    batch = next(ds.splits["train"].batches(5, shuffle=True, seed=3))
    assert (
        batch["video"].dtype == torch.float32
        and -1.0 <= float(batch["video"].min()) <= float(batch["video"].max()) <= 1.0
    )
    assert batch["audio"].shape[1:] == (1, 32, 64) and batch["label"].shape == (5,)
    assert batch["audio_present"].all() and batch["video_present"].all() and len(batch["id"]) == 5
    again = next(ds.splits["train"].batches(5, shuffle=True, seed=3))
    assert batch["id"] == again["id"]
