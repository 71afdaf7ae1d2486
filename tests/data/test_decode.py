"""Decoding real media: each defect met on real recordings reproduced on a generated file, for both decoders.

torchcodec needs system FFmpeg libraries; where they do not load its cases are skipped (PyAV always runs).
Tolerances between the decoders: frames at their native size equal up to 1 level of 255 on average (both convert
with swscale), resized frames within 1.5 levels (PyAV resizes with swscale, torchcodec's frames with torch's
antialiased bilinear), audio RMS difference < 0.01 (both resample with swresample).
"""

from __future__ import annotations

import json

import pytest
import torch
from oddmedia import SR, onset, red, write

from harness.data.decode import CorruptMediaError, decode, decoder_name, torchcodec_usable
from harness.data.prepare import decode_clip

NO_FFMPEG = pytest.mark.skipif(not torchcodec_usable(), reason="no system FFmpeg for torchcodec")
DECODERS = ["pyav", pytest.param("torchcodec", marks=NO_FFMPEG)]


def _index(frames: torch.Tensor) -> list[int]:
    """The source frame index each decoded frame shows (by its red level; indices < 43 are unambiguous)."""
    r = frames[:, 0, -1, -1].float()  # bottom-right pixel: red only
    return [min(range(43), key=lambda i: abs(red(i) - v)) for v in r.tolist()]


@pytest.mark.parametrize("dec", DECODERS)
def test_late_audio_stream_is_placed_by_its_timestamps(tmp_path, dec):
    path = write(tmp_path / "late.mp4", audio_offset=0.476)  # the audio stream starts 0.476 s after the video
    d = decode(str(path), [1.0], 0.0, 4.0, SR, prefer=dec)
    assert abs(onset(d.audio) - 0.476) < 0.005  # torchcodec before the fix: 0.064 (the stream's first sample at 0)
    assert d.audio.shape == (4 * SR,)


@pytest.mark.parametrize("dec", DECODERS)
def test_variable_frame_rate(tmp_path, dec):
    pts = [125 * i for i in range(20)] + [2500 + 250 * i for i in range(20)]  # 8 fps for 2.5 s, then 4 fps
    path = write(tmp_path / "vfr.mp4", pts_ms=pts)
    times = [0.3, 2.0, 2.6, 3.1, 5.0, 7.2]
    d = decode(str(path), times, 0.0, 1.0, SR, prefer=dec)
    want = [max(i for i, p in enumerate(pts) if p <= t * 1000) for t in times]
    assert _index(d.video) == want  # torchcodec's approximate mode raised IndexError here (index 48 of 40)


@pytest.mark.parametrize("dec", DECODERS)
def test_no_frozen_frames_past_the_end(tmp_path, dec):
    path = write(tmp_path / "short.mp4", n=24, fps=8)  # 3 s
    d = decode(str(path), [0.5, 2.9, 3.5, 6.0, 9.0], 0.0, 10.0, SR, prefer=dec)
    assert d.video.shape[0] == 2 and abs(d.video_end - 3.0) < 1e-6  # no frame for times after the end
    assert d.audio_end is not None and abs(d.audio_end - 3.0) < 0.07 and (d.audio[4 * SR :] == 0).all()


@pytest.mark.parametrize("dec", DECODERS)
def test_rotation_is_applied(tmp_path, dec):
    plain = decode(str(write(tmp_path / "plain.mp4")), [1.0], 0.0, 1.0, SR, prefer=dec).video
    turned = decode(str(write(tmp_path / "rot.mp4", rotation=90)), [1.0], 0.0, 1.0, SR, prefer=dec).video
    assert turned.shape[-2:] == (64, 48)  # upright: as players show it (display matrix: 90 degrees)
    assert (turned.float() - torch.rot90(plain, 1, (-2, -1)).float()).abs().mean() < 1.0


@pytest.mark.parametrize("dec", DECODERS)
def test_stereo_is_averaged(tmp_path, dec):
    d = decode(str(write(tmp_path / "stereo.mp4", channels=2)), [1.0], 0.0, 4.0, SR, prefer=dec)
    peak = d.audio[SR:].abs().max().item()
    assert abs(peak - 0.225) < 0.01  # (0.3 + 0.15) / 2; the 0.707 downmix gave 0.318


@pytest.mark.parametrize("dec", DECODERS)
def test_audio_only_file_is_named(tmp_path, dec):
    with pytest.raises(CorruptMediaError, match="audio-only"):
        decode(str(write(tmp_path / "a.mp4", video=False, seconds=2)), [0.5], 0.0, 1.0, SR, prefer=dec)


@pytest.mark.skipif(not torchcodec_usable(), reason="no system FFmpeg for torchcodec")
def test_decoders_agree(tmp_path):
    path = write(tmp_path / "25fps.mp4", n=42, fps=25, audio_offset=0.2, seconds=4.0)
    times = [0.04 * k for k in range(42)]  # on frame starts: the ties that split the decoders
    a, b = (decode(str(path), times, 0.0, 4.0, SR, prefer=d) for d in ("pyav", "torchcodec"))
    assert _index(a.video) == _index(b.video) == list(range(42))
    assert (a.video.float() - b.video.float()).abs().mean() < 1.0
    assert (a.audio - b.audio).pow(2).mean().sqrt() < 0.01
    a, b = (decode(str(path), times, 0.0, 4.0, SR, 32, prefer=d) for d in ("pyav", "torchcodec"))
    assert a.video.shape == b.video.shape == (len(times), 3, 32, 43)
    assert (a.video.float() - b.video.float()).abs().mean() < 1.5


def test_segment_past_the_end_is_short_not_frozen(tmp_path):
    path = write(tmp_path / "v.mp4", n=40, fps=8)  # 5 s; a segment [3, 9) runs 4 s past the end
    s = {"frontend": {"n_mels": 16}, "cache_fps": 4.0, "cache_short_side": 32, "jpeg_quality": 90, "decoder": "pyav"}
    clip = decode_clip((str(path), 3.0, 9.0, s))
    assert clip["info"]["short"] and abs(clip["info"]["seconds"] - 2.0) < 1e-6
    assert len(clip["jpeg"]) == 8  # 2 s at 4 fps: no frame stored for the missing 4 s
    assert clip["fbank"].shape[1] == 598  # the whole 6-s window's log-mel (silence where the file has none)
    with pytest.raises(CorruptMediaError, match="after the video ends"):
        decode_clip((str(path), 6.0, 9.0, s))


def test_decoder_used_is_recorded(tmp_path):
    from harness.data.decode import resolve_decoder

    assert decoder_name("pyav").startswith("pyav ")
    auto = decoder_name("auto")
    assert auto.split()[0] == resolve_decoder("auto") and auto.split()[0] in ("pyav", "torchcodec")
    from harness.cli import main
    from harness.data.dataset import PreparedDataset

    root, cache = tmp_path / "root", tmp_path / "cache"
    assert main(["synth", "--out", str(root), "--layout", "ave", "--clips", "3"]) == 0
    sets = ["frames=2", "image_size=32", "resize=32", "n_mels=16", "target_frames=32", "decoder=auto"]
    assert (
        main(["prepare", "ave", "--root", str(root), "--cache", str(cache), *[x for s in sets for x in ("--set", s)]])
        == 0
    )
    (manifest,) = cache.glob("*/manifest.json")
    m = json.loads(manifest.read_text())
    assert m["decoder"] == auto and m["settings"]["decoder"] == auto.split()[0]  # what ran, never "auto"
    assert issubclass(PreparedDataset, object)
