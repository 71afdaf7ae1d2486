"""Decoding media files: frames at timestamps and mono audio at a fixed rate, with torchcodec or PyAV.

torchcodec is the main path (its ``VideoDecoder`` and ``AudioDecoder``); it needs FFmpeg's shared libraries, and where
they are missing (``RuntimeError: Could not load libtorchcodec``) PyAV, whose wheels carry FFmpeg, decodes instead.
Which one ran, and its version, is recorded (``decoder_name()``, e.g. ``"pyav 18.1.0"``) in the prepared cache's
manifest and in each run's tags.

Frames are those *played at* each timestamp (the last frame whose presentation time is <= t), resized so that the
short side is ``resize`` and centre-cropped to ``size`` x ``size``. Audio is the half-open range [start, stop)
resampled to mono ``sample_rate`` and zero-padded to its nominal length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


class CorruptMediaError(RuntimeError):
    """A media file that cannot be opened or decoded (truncated, not a media file, no video stream)."""


@dataclass
class Decoded:
    """One clip's decoded media: ``video`` uint8 (T, 3, H, W) and ``audio`` float (samples,) or None (no stream)."""

    video: torch.Tensor
    audio: torch.Tensor | None


@functools.cache
def torchcodec_usable() -> bool:
    """Whether torchcodec imports and its FFmpeg libraries load (probed once per process)."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception:  # older releases raise at import when FFmpeg is missing
        return False
    try:
        VideoDecoder(b"\x00" * 64)  # loads the libraries first, then fails on the bytes: only the former matters
    except Exception as e:
        return "Could not load libtorchcodec" not in str(e)
    return True


def decoder_name(prefer: str = "auto") -> str:
    """``"torchcodec <version>"`` or ``"pyav <version>"``: the decoder :func:`decode` uses for ``prefer``."""
    if prefer != "pyav" and torchcodec_usable():
        import torchcodec

        return f"torchcodec {torchcodec.__version__}"
    if prefer == "torchcodec":
        raise RuntimeError("decoder 'torchcodec' was asked for, but torchcodec or its FFmpeg libraries cannot load")
    import av

    return f"pyav {av.__version__}"


def _fit(frames: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """(T, 3, h, w) uint8 -> short side ``resize`` (bilinear, antialiased) -> centre crop (T, 3, size, size)."""
    h, w = frames.shape[-2:]
    scale = resize / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(frames.float(), size=(nh, nw), mode="bilinear", antialias=True)
        frames = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return frames[..., top : top + size, left : left + size].contiguous()


def _pad(wave: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(wave[:n], (0, max(0, n - wave.shape[0])))


def decode(path: str, times: list[float], start: float, stop: float, size: int, resize: int, sample_rate: int,
           prefer: str = "auto") -> Decoded:  # fmt: skip
    """Decode the frames played at ``times`` (seconds) and the audio of [start, stop) of one file.

    Raises:
        CorruptMediaError: the file cannot be opened or decoded, or has no video frame.
    """
    use_tc = prefer != "pyav" and torchcodec_usable()
    try:
        video, audio = (_torchcodec if use_tc else _pyav)(path, times, start, stop, sample_rate)
    except CorruptMediaError:
        raise
    except Exception as e:  # av.error.*, RuntimeError of torchcodec, ValueError of odd streams
        raise CorruptMediaError(f"{path}: {type(e).__name__}: {e}") from e
    n = round((stop - start) * sample_rate)
    return Decoded(_fit(video, size, resize), None if audio is None else _pad(audio, n))


def _torchcodec(path: str, times: list[float], start: float, stop: float, sample_rate: int):
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    dec = VideoDecoder(path, dimension_order="NCHW", seek_mode="approximate")
    md = dec.metadata
    lo = md.begin_stream_seconds or 0.0
    hi = (md.end_stream_seconds or md.duration_seconds or lo) - 1e-3
    video = dec.get_frames_played_at([min(max(t, lo), hi) for t in times]).data  # (T, 3, h, w) uint8
    try:
        samples = AudioDecoder(path, sample_rate=sample_rate, num_channels=1).get_samples_played_in_range(start, stop)
    except ValueError:  # "No audio stream" (or an empty range): the clip is silent
        return video, None
    return video, samples.data[0]


def _pyav(path: str, times: list[float], start: float, stop: float, sample_rate: int):
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise CorruptMediaError(f"{path}: cannot open: {e}") from e
    with container:
        if not container.streams.video:
            raise CorruptMediaError(f"{path}: no video stream")
        video = _pyav_frames(container, times)
        audio = _pyav_audio(container, start, stop, sample_rate) if container.streams.audio else None
    return video, audio


def _pyav_frames(container, times: list[float]) -> torch.Tensor:
    """Frames played at sorted-or-not ``times``: one pass from a seek before the first, keeping only those picked."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    order = np.argsort(times)
    first = float(times[order[0]])
    if first > 1.0:  # seek to the keyframe before the window (long EPIC videos); decode forward from there
        container.seek(int(first / stream.time_base), stream=stream, backward=True)
    out: list[np.ndarray | None] = [None] * len(times)
    k, prev = 0, None
    for frame in container.decode(stream):
        t = frame.time if frame.time is not None else 0.0
        while k < len(order) and t > times[order[k]] + 1e-6:  # frame starts after target k: target k shows prev
            out[order[k]] = (prev if prev is not None else frame).to_ndarray(format="rgb24")
            k += 1
        if k == len(order):
            break
        prev = frame
    if prev is None:
        raise CorruptMediaError("no decodable video frame")
    for j in order[k:]:  # targets after the last frame: hold the last frame
        out[j] = prev.to_ndarray(format="rgb24")
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # (T, 3, h, w)


def _pyav_audio(container, start: float, stop: float, sample_rate: int) -> torch.Tensor:
    """Mono float samples of [start, stop) at ``sample_rate``, timed by the first decoded frame's pts."""
    import av

    stream = container.streams.audio[0]
    container.seek(int(max(0.0, start - 0.5) / stream.time_base), stream=stream, backward=True)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks, t0 = [], None
    for frame in container.decode(stream):
        if t0 is None:
            t0 = frame.time if frame.time is not None else 0.0
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
        if frame.time is not None and frame.time > stop:
            break
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    if t0 is None:
        return torch.zeros(0)
    wave = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0)
    a, b = round((start - t0) * sample_rate), round((stop - t0) * sample_rate)
    if a < 0:  # the stream starts after `start`: silence before it
        wave, b, a = torch.nn.functional.pad(wave, (-a, 0)), b - a, 0
    return wave[a:b].float()
