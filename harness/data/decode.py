"""Decoding media files: frames at timestamps and mono audio at a fixed rate, with PyAV or torchcodec.

PyAV is the default (``decoder: pyav``): its wheels carry FFmpeg, so the same decoder runs everywhere and a cache
does not change when system FFmpeg libraries appear. torchcodec (``decoder: torchcodec``) needs FFmpeg's shared
libraries; ``auto`` takes it where they load and PyAV otherwise. The decoder that actually ran and its version
(``decoder_name()``, e.g. ``"pyav 18.1.0"``) is what the manifest and each run's tags record, never ``auto``.

Both decoders follow one timeline, the container's presentation times:
- frames are those *played at* each requested time (the last frame whose presentation time is <= t, ties within
  1 ms resolved to the later frame: 25-fps files put frame starts on a 12.5-fps grid's times), in the rotation
  the file asks the player for (its display matrix); requested times at or after the end of the video stream get no
  frame (:attr:`Decoded.video_end` says where it ended), so a short file is never padded with a frozen last frame;
- audio is the half-open range [start, stop) placed by the stream's own timestamps (an audio stream that starts
  0.476 s after the video gets 0.476 s of silence in front), resampled to ``sample_rate``, the channels averaged
  (stereo -> mono as (L + R) / 2), zero where the stream has no samples.
torchcodec runs in exact seek mode: approximate mode maps times to frame indices with the header's frame rate, which
is wrong for variable-frame-rate files. ``tests/data/test_decode.py`` holds the two decoders to the same frames (mean
absolute difference < 1.5 levels of 255: their resizers differ) and the same audio (RMS difference < 0.01).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

DECODERS = ("auto", "torchcodec", "pyav")
TIE = 1e-3  # a time on a frame's start shows that frame, also where the two decoders round timestamps differently


class CorruptMediaError(RuntimeError):
    """A media file that cannot be opened or decoded (truncated, not a media file, no video stream)."""


@dataclass
class Decoded:
    """One file's decoded range.

    Attributes:
        video: uint8 (N, 3, h, w): the frames played at the first N requested times (N < len(times) when the video
            stream ends first).
        video_end: seconds where the video stream ends, or None when it runs past the last requested time.
        audio: float (samples,) of [start, stop), or None (no audio stream).
        audio_end: seconds where the audio stream ends, or None when it runs past ``stop``.
    """

    video: torch.Tensor
    video_end: float | None
    audio: torch.Tensor | None
    audio_end: float | None


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


def resolve_decoder(prefer: str = "pyav") -> str:
    """``"torchcodec"`` or ``"pyav"``: the decoder ``prefer`` (``auto``, ``torchcodec``, ``pyav``) means here."""
    if prefer == "pyav":
        return "pyav"
    if torchcodec_usable():
        return "torchcodec"
    if prefer == "torchcodec":
        raise RuntimeError(
            "dataset.decoder='torchcodec', but torchcodec's FFmpeg libraries cannot load (install FFmpeg 4-8, "
            "e.g. `apt-get install ffmpeg`), or use dataset.decoder=pyav"
        )
    return "pyav"


def decoder_name(prefer: str = "pyav") -> str:
    """``"torchcodec <version>"`` or ``"pyav <version>"``: the decoder :func:`decode` uses for ``prefer``."""
    if resolve_decoder(prefer) == "torchcodec":
        import torchcodec

        return f"torchcodec {torchcodec.__version__}"
    import av

    return f"pyav {av.__version__}"


def scaled_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) scaled so that the short side is ``short_side`` (None: unchanged), rounded, at least 1."""
    if short_side is None:
        return h, w
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def decode(path: str, times: list[float], start: float, stop: float, sample_rate: int,
           short_side: int | None = None, prefer: str = "pyav", threads: int = 0) -> Decoded:  # fmt: skip
    """Decode the frames played at ``times`` (ascending, seconds) and the audio of [start, stop) of one file.

    Frames are resized (bilinear, antialiased) so that their short side is ``short_side`` (None: as decoded).
    ``threads``: FFmpeg's decoding (and PyAV's scaling) threads; 0 = FFmpeg's choice (about one per core), 1 = this
    thread only (what ``harness prepare --workers N`` runs in each of its processes).

    Raises:
        CorruptMediaError: the file cannot be opened or decoded, or has no video stream.
    """
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("decode: times must be ascending")
    times = [t + TIE for t in times]
    use = _torchcodec if resolve_decoder(prefer) == "torchcodec" else _pyav
    try:
        return use(path, times, start, stop, sample_rate, short_side, threads)
    except CorruptMediaError:
        raise
    except Exception as e:  # av.error.*, RuntimeError of torchcodec, ValueError of odd streams
        raise CorruptMediaError(f"{path}: {type(e).__name__}: {e}") from e


def _place(wave: torch.Tensor, first: float, start: float, stop: float, sample_rate: int) -> torch.Tensor:
    """Samples of [start, stop) from ``wave`` whose first sample plays at ``first`` s; zeros where it has none."""
    n = round((stop - start) * sample_rate)
    a = round((start - first) * sample_rate)  # index in wave of the range's first sample
    out = torch.zeros(n)
    lo, hi = max(0, a), min(wave.shape[0], a + n)
    if hi > lo:
        out[lo - a : hi - a] = wave[lo:hi]
    return out


def _audio_end(first: float, samples: int, stop: float, sample_rate: int) -> float | None:
    end = first + samples / sample_rate
    return end if end < stop - 0.02 else None  # 20 ms: an AAC frame's worth of slack before calling it short


# -- torchcodec --------------------------------------------------------------------------------------------------


def _torchcodec(path: str, times: list[float], start: float, stop: float, sample_rate: int, short_side,
                threads: int = 0):  # fmt: skip
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    try:
        dec = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=threads)
    except Exception as e:
        if _has_audio_only(path):
            raise CorruptMediaError(f"{path}: no video stream (an audio-only file)") from e
        raise
    md = dec.metadata
    lo, end = md.begin_stream_seconds or 0.0, md.end_stream_seconds
    kept = [t for t in times if end is None or t < end]
    hwc = dec.get_frames_played_at([max(t, lo) for t in kept]).data if kept else torch.zeros(0, 1, 1, 3)
    video = hwc.permute(0, 3, 1, 2)  # (N, 3, h, w), channels-last in memory: what the JPEG encoder reads
    if video.shape[0] and short_side is not None:
        size = scaled_size(*video.shape[-2:], short_side)
        if size != tuple(video.shape[-2:]):
            # uint8 channels-last is torch's vectorised antialiased path (10x the float one, measured)
            video = torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True)
    video_end = end if len(kept) < len(times) else None
    try:
        samples = AudioDecoder(path, sample_rate=sample_rate).get_samples_played_in_range(start, stop)
    except (ValueError, RuntimeError):  # no audio stream, or none of it in the range (silence)
        silent = torch.zeros(round((stop - start) * sample_rate)) if _has_audio(path) else None
        return Decoded(video, video_end, silent, None if silent is None else start)
    wave = samples.data.mean(0)  # channels averaged
    first = samples.pts_seconds  # where the returned samples start: later than `start` when the stream does
    return Decoded(video, video_end, _place(wave, first, start, stop, sample_rate),
                   _audio_end(first, wave.shape[0], stop, sample_rate))  # fmt: skip


def _has_audio(path: str) -> bool:
    import av

    with av.open(path) as c:
        return bool(c.streams.audio)


def _has_audio_only(path: str) -> bool:
    import av

    try:
        with av.open(path) as c:
            return bool(c.streams.audio) and not c.streams.video
    except Exception:
        return False


# -- PyAV --------------------------------------------------------------------------------------------------------


def _pyav(path: str, times: list[float], start: float, stop: float, sample_rate: int, short_side, threads: int = 0):
    """One demuxing pass over both streams (a file is read once), from a seek before the earliest time wanted."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise CorruptMediaError(f"{path}: cannot open: {e}") from e
    with container:
        if not container.streams.video:
            kind = "an audio-only file" if container.streams.audio else "no stream"
            raise CorruptMediaError(f"{path}: no video stream ({kind})")
        vs = container.streams.video[0]
        vs.codec_context.thread_count = threads
        if threads != 1:
            vs.thread_type = "AUTO"  # frame and slice threads
        streams = [vs, *container.streams.audio[:1]]
        video = _Frames(vs, times, _Converter(short_side, threads))
        audio = _Audio(start, stop, sample_rate) if len(streams) > 1 else None
        first = min(times[0] if times else start, start)
        # A seek to 0 would lose the encoder-delay skip of the first AAC frame: decode from the top there.
        if first > 1.0:  # long EPIC videos: from the keyframe before the window
            container.seek(int((first - 0.5) / vs.time_base), stream=vs, backward=True)
        for packet in container.demux(*streams):  # at the end, one empty packet per stream flushes its decoder
            sink = video if packet.stream is vs else audio
            if not sink.done:
                for frame in packet.decode():
                    sink.push(frame)
            if video.done and (audio is None or audio.done):
                break
        frames, video_end = video.finish()
        wave, audio_end = audio.finish() if audio is not None else (None, None)
    return Decoded(frames, video_end, wave, audio_end)


class _Converter:
    """Decoded frames -> (h, w, 3) uint8 RGB, short side ``short_side`` (bilinear, swscale's antialiased filter),
    upright by the frame's display rotation; one converter per file, so swscale sets its filters up once.

    A 4:2:0 frame is scaled in YUV and turned into RGB by a second pass on a copy padded to a width of a multiple of
    16, cut back after: swscale's vectorised YUV -> RGB runs only at such widths (455 px, VGGSound's 256-px short
    side of 16:9, took 1.8 ms a frame in one pass against 0.45 ms in these two, measured). The second pass takes
    each pixel's chroma from its 2x2 block (no interpolation), so the padding never reaches a kept pixel; after the
    cache's JPEG (4:2:0 itself) the frames are as close to an antialiased float resize of the full frame as the
    one-pass conversion's (39.46 dB against 39.49 dB, measured on bench/cache.py's clips).
    """

    PAD = 16

    def __init__(self, short_side: int | None, threads: int = 0):
        from av.video.reformatter import VideoReformatter

        self.short_side, self.threads = short_side, threads
        self.scaler, self.rgb = VideoReformatter(), VideoReformatter()
        self.pad = None

    def __call__(self, frame) -> np.ndarray:
        rot = int(getattr(frame, "rotation", 0) or 0) % 360
        h, w = (frame.width, frame.height) if rot in (90, 270) else (frame.height, frame.width)
        nh, nw = scaled_size(h, w, self.short_side)
        if rot in (90, 270):
            nh, nw = nw, nh
        if frame.format.name in ("yuv420p", "yuvj420p"):
            small = self.scaler.reformat(frame, width=nw, height=nh, interpolation="BILINEAR", threads=self.threads)
            self.pad = _padded(small, self.PAD, self.pad)  # one buffer per file: swscale is done with it on return
            x = self.rgb.reformat(self.pad, format="rgb24", threads=self.threads).to_ndarray()[:, :nw]
        else:  # 10-bit, 4:2:2, 4:4:4, RGB sources: swscale's general path in one pass
            x = self.rgb.reformat(frame, width=nw, height=nh, format="rgb24", interpolation="BILINEAR",
                                  threads=self.threads).to_ndarray()  # fmt: skip
        return np.rot90(x, k=rot // 90) if rot else x


def _padded(frame, multiple: int, out=None):
    """``frame`` copied into a frame whose width is a multiple of ``multiple`` (the extra columns undefined); into
    ``out`` when it has that size and format."""
    import av

    width = -(-frame.width // multiple) * multiple
    if width == frame.width:
        return frame
    if out is None or (out.width, out.height, out.format.name) != (width, frame.height, frame.format.name):
        out = av.VideoFrame(width, frame.height, frame.format.name)
    for dst, src in zip(out.planes, frame.planes):
        rows = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)
        np.frombuffer(dst, np.uint8).reshape(-1, dst.line_size)[: rows.shape[0], : src.width] = rows[:, : src.width]
    out.colorspace, out.color_range = frame.colorspace, frame.color_range
    return out


class _Frames:
    """Collects the frames played at ascending ``times``, converting only those picked, into one array."""

    def __init__(self, stream, times: list[float], convert: _Converter):
        self.stream, self.times, self.convert = stream, times, convert
        self.out: np.ndarray | None = None  # (len(times), h, w, 3), allocated at the first frame picked
        self.k = 0  # frames filled
        self.prev = None
        self.done = not times

    def _put(self, frame) -> None:
        x = self.convert(frame)
        if self.out is None:
            self.out = np.empty((len(self.times), *x.shape), np.uint8)
        self.out[self.k] = x  # a frame of another size mid-stream is an error: counted corrupt
        self.k += 1

    def push(self, frame) -> None:
        t = frame.time if frame.time is not None else 0.0
        times = self.times
        while self.k < len(times) and t > times[self.k]:  # frame starts after target k: target k shows prev
            self._put(self.prev if self.prev is not None else frame)
        self.prev = frame
        self.done = self.k == len(times)

    def finish(self) -> tuple[torch.Tensor, float | None]:
        end = None
        if not self.done:  # the stream ended: its last frame plays until the end of its duration
            if self.prev is None:
                raise CorruptMediaError("no decodable video frame")
            prev, rate = self.prev, self.stream.average_rate or self.stream.guessed_rate or 25
            end = (prev.time or 0.0) + (float(prev.duration * prev.time_base) if prev.duration else 1.0 / float(rate))
            while self.k < len(self.times) and self.times[self.k] < end:
                self._put(prev)
            end = end if self.k < len(self.times) else None
        if self.out is None:
            return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), end
        return torch.from_numpy(self.out[: self.k]).permute(0, 3, 1, 2), end  # (N, 3, h, w), channels-last memory


class _Audio:
    """Collects [start, stop) at ``sample_rate``, channels averaged, placed by the first decoded frame's time."""

    def __init__(self, start: float, stop: float, sample_rate: int):
        import av

        self.start, self.stop, self.rate = start, stop, sample_rate
        self.resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # keeps the layout: averaged below
        self.chunks: list[np.ndarray] = []  # (channels, samples) each
        self.first: float | None = None
        self.done = False

    def push(self, frame) -> None:
        if self.first is None:
            self.first = frame.time if frame.time is not None else 0.0
        self.chunks += [out.to_ndarray() for out in self.resampler.resample(frame)]
        self.done = frame.time is not None and frame.time > self.stop

    def finish(self) -> tuple[torch.Tensor, float | None]:
        ended = not self.done
        self.chunks += [out.to_ndarray() for out in self.resampler.resample(None)]
        if self.first is None:
            return torch.zeros(round((self.stop - self.start) * self.rate)), self.start
        if len({c.shape[0] for c in self.chunks}) == 1:  # one layout throughout: average once
            wave = torch.from_numpy(np.concatenate(self.chunks, axis=1).mean(0)).float()
        else:
            wave = torch.from_numpy(np.concatenate([c.mean(0) for c in self.chunks])).float() if self.chunks else None
        wave = wave if wave is not None else torch.zeros(0)
        end = _audio_end(self.first, wave.shape[0], self.stop, self.rate) if ended else None
        return _place(wave, self.first, self.start, self.stop, self.rate), end
