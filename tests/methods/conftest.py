"""A tiny backbone and input spec shared by the method tests (``harness.testing``: width 16, 3 layers)."""

from __future__ import annotations

import pytest

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig
from harness.testing import TINY_BACKBONE, TINY_SPEC
from harness.testing import make_batch as _make_batch

TINY = TINY_BACKBONE
SPEC = TINY_SPEC


@pytest.fixture
def backbone() -> BackboneConfig:
    return BackboneConfig(**TINY)


@pytest.fixture
def spec() -> InputSpec:
    return SPEC


@pytest.fixture
def make_batch():
    """``make_batch(spec, audio_present, video_present, seed=0)``: random clips with that presence pattern."""
    return _make_batch
