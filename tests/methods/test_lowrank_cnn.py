"""lowrank on ``backbone.family: cnn`` (AVBERT's per-clip CNN front ends, ``harness/models/cnn.py``): the method
contract with every variant, and the front ends' one-embedding-per-clip property."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.models.backbones import BackboneConfig, cnn_tiny
from harness.models.cnn import AudioClipCNN, VideoClipCNN
from harness.testing import MethodContract
from harness.testing.contract import TINY_SPEC, cases

CNN_BACKBONE = {**cnn_tiny(), "embed_dim": 16, "depth": 3, "num_heads": 2, "cnn_width": 4}
CNN_SPEC = dataclasses.replace(TINY_SPEC, clips=2)


class TestLowRankOnCNN(MethodContract):
    """The contract on the cnn front ends: AVBERT's mid fusion (every variant: slow)."""

    methods = ("lowrank",)
    fast_cases = (("lowrank", {}),)

    def pytest_generate_tests(self, metafunc) -> None:
        if {"name", "overrides"} <= set(metafunc.fixturenames):
            found = [*self.fast_cases] + [
                pytest.param(n, o, marks=pytest.mark.slow)
                for n, o in cases(self.methods)
                if (n, o) not in self.fast_cases
            ]
            metafunc.parametrize("name,overrides", found)

    @pytest.fixture
    def backbone(self) -> BackboneConfig:
        return BackboneConfig(**CNN_BACKBONE)

    @pytest.fixture
    def spec(self):
        return CNN_SPEC


@pytest.mark.parametrize("video_cnn", ["tiny_r3d", "tiny_r2plus1d"])
def test_each_clip_embedding_sees_only_its_own_clip(video_cnn):
    cfg = BackboneConfig(**{**CNN_BACKBONE, "video_cnn": video_cnn})
    torch.manual_seed(0)
    video, audio = VideoClipCNN(cfg, CNN_SPEC).eval(), AudioClipCNN(cfg, CNN_SPEC).eval()
    v = torch.randn(2, 4, 3, 16, 16)
    a = torch.randn(2, 1, 16, 48)
    v2, a2 = v.clone(), a.clone()
    v2[:, 2:] += 1.0  # the second clip's frames
    a2[..., 24:] += 1.0  # the second clip's spectrogram columns
    ev, ev2, ea, ea2 = video(v), video(v2), audio(a), audio(a2)
    assert ev.shape == ea.shape == (2, 2, 16)
    torch.testing.assert_close(ev[:, 0], ev2[:, 0])  # clip 0 unchanged
    torch.testing.assert_close(ea[:, 0], ea2[:, 0])
    assert not torch.allclose(ev[:, 1], ev2[:, 1]) and not torch.allclose(ea[:, 1], ea2[:, 1])


def test_clips_must_divide_the_sample():
    from harness.models.cnn import clip_errors

    bad = dataclasses.replace(TINY_SPEC, clips=5)  # neither 4 frames nor 48 columns
    assert [k for k, _ in clip_errors(bad)] == ["dataset.clips_per_sample", "dataset.clips_per_sample"]
    assert clip_errors(CNN_SPEC) == []


def test_a_run_whose_clips_do_not_split_is_a_config_error(cache):
    from harness.config import ConfigError, RunSpec

    run = {"name": "bad", "dataset": {"name": "synthetic", "clips_per_sample": 3}, "backbone": {"name": "cnn_tiny"},
           "method": {"name": "lowrank"}, "cache_dir": str(cache)}  # fmt: skip
    with pytest.raises(ConfigError, match="dataset.clips_per_sample.*3 does not divide the 4 frames"):
        RunSpec.from_dict(run)
    with pytest.raises(ConfigError, match="backbone.family"):  # a method without a cnn implementation
        RunSpec.from_dict({**run, "dataset": {"name": "synthetic", "clips_per_sample": 2}, "method": {"name": "mbt"}})
