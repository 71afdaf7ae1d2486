"""The plug-in's own CI: fusion-harness's method contract on ``gmu``, and the unit's equations."""

from __future__ import annotations

import torch

from harness.models.backbones import BackboneConfig
from harness.registry import METHODS
from harness.testing import TINY_BACKBONE, TINY_SPEC, MethodContract, build, make_batch


class TestGMUContract(MethodContract):
    methods = ("gmu",)


def test_gmu_is_found_through_its_entry_point():
    assert METHODS.origin("gmu") == "plug-in from harness-gmu"
    assert METHODS.describe("gmu").startswith("Gated multimodal unit on late fusion's two streams.")


def test_a_clip_with_one_modality_takes_that_branch():
    model = build("gmu", {}, BackboneConfig(**TINY_BACKBONE), TINY_SPEC).eval()
    batch = make_batch(TINY_SPEC, [True, False], [False, True])
    out = model(batch)["embedding"]
    z, _ = model.unimodal(batch)
    h_audio = torch.tanh(model.hidden["audio"](z["audio"][:, 0]))
    h_video = torch.tanh(model.hidden["video"](z["video"][:, 0]))
    torch.testing.assert_close(out[0], h_audio[0])  # audio only: h = h_a
    torch.testing.assert_close(out[1], h_video[1])  # video only: h = h_v
