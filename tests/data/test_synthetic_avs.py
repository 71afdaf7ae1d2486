"""``synthetic_avs``: the sounding object's mask per frame, and a segmentation run through run_trial on it."""

from __future__ import annotations

import pytest
import torch

from harness.config import RunSpec
from harness.data.synthetic import COLOURS, SyntheticConfig, generate
from harness.data.synthetic_avs import SyntheticAVSConfig
from harness.run.trial import run_trial


@pytest.mark.parametrize("idle", [0.5, 0.0])
def test_the_mask_is_where_the_sounding_object_is_seen(idle):
    cfg = SyntheticAVSConfig(clips_train=16, clips_val=8, clips_test=8, noise=0.0, distractors=2, idle_brightness=idle)
    data = generate(cfg, masks=True, latents=True)["train"]
    g = torch.Generator().manual_seed(cfg.seed)
    colour = torch.rand(16, cfg.colours, generator=g).argsort(dim=1)[:, 0]  # the first draw of generate: object 0's
    video, mask = data["video"].float() / 255, data["mask"].bool()  # (n, T, 3, H, W), (n, T, H, W)
    lit = data["sounding"].repeat_interleave(cfg.frames // cfg.slots, dim=1)  # (n, T): object 0 flashing
    for i in range(16):
        for t in range(cfg.frames):
            pixels = video[i, t].permute(1, 2, 0)[mask[i, t]]  # (P, 3)
            brightness = 1.0 if lit[i, t] else idle
            if brightness == 0:
                assert pixels.numel() == 0  # not drawn: nothing to segment
                continue
            expected = (COLOURS[colour[i]] * brightness * 255).round() / 255
            torch.testing.assert_close(pixels, expected.expand_as(pixels), atol=1 / 255, rtol=0)
    if idle:
        assert mask.flatten(2).any(2).float().mean() > 0.9  # all but the few frames where it is hidden


def test_masks_change_no_clip():
    cfg = SyntheticConfig(clips_train=8, clips_val=8, clips_test=8)
    plain, masked = generate(cfg), generate(cfg, masks=True)
    for split in plain:
        for key, value in plain[split].items():
            assert torch.equal(value, masked[split][key]), (split, key)


def test_segmentation_runs_on_synthetic_avs(cache):
    run = {
        "name": "avs_tiny",
        "seed": 0,
        "dataset": {"name": "synthetic_avs", "clips_train": 48, "clips_val": 16, "clips_test": 16},
        "task": {"name": "segmentation", "decoder_width": 8},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8},
        "method": {"name": "mbt", "fusion_layer": 1, "bottleneck_tokens": 2},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "threads": 1},
        "cache_dir": str(cache),
    }
    final = run_trial(RunSpec.from_dict(run))
    for key in ("test/miou", "test/fscore", "test/miou:video_only", "val/miou"):
        assert 0 <= final[key] <= 100, key
