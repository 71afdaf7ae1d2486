"""Odd media files for the decoding tests, written with PyAV: late audio, variable frame rate, rotation, stereo,
audio only, short files. Frame i shows red = (i * 6) % 256 over a green top-left block, so a decoded frame names
its index; the audio is a 440 Hz tone (left 0.3, right 0.15 in stereo)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

SR = 16000


def red(i: int) -> int:
    return (i * 6) % 256


def write(path: Path, n: int = 40, fps: int = 8, size: tuple[int, int] = (48, 64), pts_ms: list[int] | None = None,
          audio_offset: float = 0.0, channels: int = 1, rotation: int = 0, video: bool = True,
          seconds: float | None = None) -> Path:  # fmt: skip
    import av

    h, w = size
    with av.open(str(path), "w") as c:
        if video:
            vs = c.add_stream("libx264", rate=Fraction(fps))
            vs.height, vs.width, vs.pix_fmt = h, w, "yuv420p"
            vs.options = {"preset": "ultrafast"}
            if pts_ms is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
            if rotation:
                vs.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=SR)
        a.layout = "mono" if channels == 1 else "stereo"
        if video:
            for i in range(n):
                img = np.zeros((h, w, 3), np.uint8)
                img[..., 0] = red(i)
                img[: h // 2, : w // 4, 1] = 255
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                if pts_ms is not None:
                    f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
                c.mux(vs.encode(f))
            c.mux(vs.encode())
        ns = round((seconds or n / fps) * SR)
        tone = np.sin(2 * np.pi * 440 * np.arange(ns) / SR)
        wave = np.stack([0.3 * tone, 0.15 * tone]).astype(np.float32)[:channels]
        off = round(audio_offset * SR)
        for at in range(0, ns, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, at : at + 1024]), format="fltp",
                                            layout=a.layout.name)  # fmt: skip
            af.sample_rate, af.pts = SR, at + off
            c.mux(a.encode(af))
        c.mux(a.encode())
    return path


def onset(wave, threshold: float = 0.1) -> float | None:
    """Seconds to the first sample above ``threshold``."""
    hit = (wave.abs() > threshold).nonzero()
    return hit[0].item() / SR if len(hit) else None
