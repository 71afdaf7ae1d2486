"""A tiny backbone and input spec shared by the method tests (width 16, 3 layers, Nv = 8, Na = 12)."""

from __future__ import annotations

import pytest
import torch

from harness.backbones import BackboneConfig
from harness.data.base import InputSpec

TINY = dict(name="test", embed_dim=16, depth=3, num_heads=2, patch_size=8, tubelet=2, audio_patch=(8, 8))
SPEC = InputSpec(frames=4, image_size=16, n_mels=16, n_frames=48, num_classes=5)


@pytest.fixture
def backbone() -> BackboneConfig:
    return BackboneConfig(**TINY)


@pytest.fixture
def spec() -> InputSpec:
    return SPEC


def _make_batch(spec: InputSpec, audio_present: list[bool], video_present: list[bool], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = len(audio_present)
    return {
        "video": torch.randn(b, spec.frames, 3, spec.image_size, spec.image_size, generator=g),
        "audio": torch.randn(b, 1, spec.n_mels, spec.n_frames, generator=g),
        "label": torch.randint(0, spec.num_classes, (b,), generator=g),
        "id": [f"clip{i}" for i in range(b)],
        "audio_present": torch.tensor(audio_present),
        "video_present": torch.tensor(video_present),
    }


@pytest.fixture
def make_batch():
    """``make_batch(spec, audio_present, video_present, seed=0)``: random clips with that presence pattern."""
    return _make_batch
