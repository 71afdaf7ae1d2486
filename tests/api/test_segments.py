"""Per-segment scoring (``harness.api.segments``): the layout of a clip's segments, and every registered method run
on each segment as a mini-clip of its own."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from harness.api import check_segments, score_per_segment, segment_spec
from harness.api.segments import merge_segments, split_segments
from harness.models.backbones import BackboneConfig
from harness.registry import METHODS
from harness.testing import TINY_BACKBONE, TINY_SPEC, build, make_batch
from harness.testing.contract import AUDIO_PRESENT, VIDEO_PRESENT

S = 2
CLIPS = dataclasses.replace(TINY_SPEC, segments=S)  # 4 frames of 16², 16 x 48 spectrogram: 2 segments of 2 + 24


def test_segment_s_is_its_frames_and_its_spectrogram_columns():
    batch = make_batch(CLIPS, [True, False, True], [True, True, False])
    mini = split_segments(batch, S)
    assert mini["video"].shape == (6, 2, 3, 16, 16) and mini["audio"].shape == (6, 1, 16, 24)
    for b in range(3):
        for s in range(S):
            row = b * S + s
            torch.testing.assert_close(mini["video"][row], batch["video"][b, 2 * s : 2 * s + 2], rtol=0, atol=0)
            columns = batch["audio"][b, :, :, 24 * s : 24 * s + 24]
            torch.testing.assert_close(mini["audio"][row], columns, rtol=0, atol=0)
            assert mini["audio_present"][row] == batch["audio_present"][b]
            assert mini["id"][row] == f"clip{b}#{s}"
    out = {"embedding": torch.arange(6.0)[:, None], "per_modality": {"audio": torch.arange(6.0)[:, None]}}
    merged = merge_segments(out, S)
    assert merged["embedding"][:, :, 0].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert merged["per_modality"]["audio"].shape == (3, 2, 1)


def test_a_clip_that_does_not_split_is_an_error_naming_the_keys():
    bad = dataclasses.replace(CLIPS, frames=3, n_frames=47, segments=10)
    keys = [k for k, _ in check_segments(bad, S)]
    assert keys == ["task.segments", "dataset.frames", "dataset.target_frames"]
    with pytest.raises(ValueError, match="segment_windows"):
        segment_spec(bad, S)
    assert segment_spec(CLIPS, S) == dataclasses.replace(CLIPS, frames=2, n_frames=24, segments=0)


def cases() -> list[tuple[str, dict]]:
    found = [(n, {}) for n in METHODS.names()]
    return found + [("lavish", {"backbone": "swinv2"}), ("mbt", {"readout": "gap"})]


@pytest.mark.parametrize(("name", "overrides"), cases(), ids=lambda v: v if isinstance(v, str) else str(v or ""))
def test_every_method_scores_each_segment_as_a_clip_of_its_own(name, overrides):
    """Hooked on whole clips, a method's (B, S, D) output at segment s is the same method's on segment s alone."""
    backbone = BackboneConfig(**TINY_BACKBONE)
    one = segment_spec(CLIPS, S)
    hooked = score_per_segment(build(name, overrides, backbone, one, seed=0).eval(), S)
    plain = build(name, overrides, backbone, one, seed=0).eval()
    batch = make_batch(CLIPS, AUDIO_PRESENT, VIDEO_PRESENT)
    out = hooked(batch)
    assert out["embedding"].shape == (4, S, hooked.embed_dim) and torch.isfinite(out["embedding"]).all()
    for s in range(S):
        alone = {k: v[s::S] for k, v in split_segments(batch, S).items()}  # segment s of every clip
        ref = plain(alone)
        torch.testing.assert_close(out["embedding"][:, s], ref["embedding"], rtol=0, atol=1e-6)
        for m, x in ref.get("per_modality", {}).items():
            torch.testing.assert_close(out["per_modality"][m][:, s], x, rtol=0, atol=1e-6)
    assert hooked.scored_segments == S
    copied = copy.deepcopy(hooked)  # the hooks are objects that travel with the method (deepcopy, pickle)
    torch.testing.assert_close(copied(batch)["embedding"], out["embedding"])
